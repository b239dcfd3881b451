"""The per-node GPU counts ClusterState keeps for feasibility, and a scratch state reused
from pass to pass: after any history of changes both equal what a fresh computation or
a fresh copy gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ClusterState, TaskRequest
from policies.cluster import MILLI
from policies.placement import fits_gpus
from tests.conftest import node

NODES = [node("a", gpus=8), node("b", gpus=4), node("c", gpus=0), node("d", gpus=2)]
MUTABLE = ("cpu_free", "mem_free", "gpu_free", "whole_free", "most_free", "pods_by_class")

# (node, first GPU, GPU count, milli per GPU); taken where it fits, else skipped
changes = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 7),
        st.sampled_from([1, 2, 4]),
        st.sampled_from([100, 250, 500, 1000]),
    ),
    max_size=40,
)


def apply(state: ClusterState, steps: list[tuple[int, int, int, int]]) -> None:
    """Allocate each step where it fits; every third step releases an earlier one."""
    held: list[tuple[int, tuple[int, ...], int]] = []
    for i, (index, first, count, milli) in enumerate(steps):
        if i % 3 == 2 and held:
            n, gpus, m = held.pop(0)
            state.release(n, gpus, m, 100, 100)
            continue
        gpus = tuple(range(first, first + count))
        try:
            state.allocate(index, gpus, milli, 100, 100)
        except ValueError:
            continue
        held.append((index, gpus, milli))


@settings(max_examples=60, deadline=None)
@given(changes)
def test_kept_counts_equal_counting_gpu_by_gpu(steps: list[tuple[int, int, int, int]]) -> None:
    state = ClusterState(NODES)
    apply(state, steps)
    gpus = state.gpu_free
    assert state.whole_free.tolist() == (gpus == MILLI).sum(axis=1).tolist()
    assert state.most_free.tolist() == gpus.max(axis=1).tolist()
    for count in (1, 2, 4, 8):
        for milli in (100, 500, 1000):
            if milli < MILLI and count > 1:
                continue  # a share is of one GPU
            task = TaskRequest(cpu_milli=0, mem_mib=0, num_gpus=count, gpu_milli=milli)
            expected = (gpus >= milli).sum(axis=1) >= count
            assert fits_gpus(task, state).tolist() == expected.tolist()


@settings(max_examples=60, deadline=None)
@given(changes, changes, changes)
def test_reused_scratch_equals_a_fresh_copy(
    before: list[tuple[int, int, int, int]],
    tried: list[tuple[int, int, int, int]],
    after: list[tuple[int, int, int, int]],
) -> None:
    """A pass tries placements on its scratch, the host changes its own state, and the
    next pass's reused scratch must be exactly the host's state again."""
    host = ClusterState(NODES)
    apply(host, before)
    scratch = host.view().scratch()
    apply(scratch, tried)
    apply(host, after)
    reused = host.view().scratch(reuse=scratch)
    assert reused is scratch
    for name in MUTABLE:
        assert np.array_equal(getattr(reused, name), getattr(host, name)), name
    other = ClusterState(NODES)  # another cluster's scratch is never reused
    assert other.view().scratch(reuse=scratch) is not scratch
