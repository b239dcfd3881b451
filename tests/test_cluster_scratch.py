"""The per-node GPU counts ClusterState keeps for feasibility, a scratch state reused
from pass to pass, and first-fit without the whole feasibility mask: after any history
of changes each equals what a fresh computation, a fresh copy or the brute-force mask
gives."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policies import ClusterState, Context, NodeSpec, Taint, TaskRequest, Toleration
from policies.best_fit import BestFit
from policies.cluster import MILLI
from policies.placement import (
    FIRST_FIT_PROBES,
    feasible_mask,
    feasible_nodes,
    first_fit,
    fits_gpus,
    select_gpus,
)
from tests.conftest import job, node

NODES = [node("a", gpus=8), node("b", gpus=4), node("c", gpus=0), node("d", gpus=2)]
MUTABLE = (
    "cpu_free",
    "mem_free",
    "gpu_free",
    "whole_free",
    "most_free",
    "gpu_free_sum",
    "in_use",
    "pods_by_class",
    "version",
)

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
    assert state.gpu_free_sum.tolist() == gpus.sum(axis=1).tolist()
    untouched = (
        (state.cpu_free == state.cpu_cap)
        & (state.mem_free == state.mem_cap)
        & (gpus.sum(axis=1) == state.gpu_count * MILLI)
    )
    assert state.in_use.tolist() == (~untouched).tolist()
    assert state.allocated_gpu_milli() == state.total_gpus * MILLI - int(gpus.sum())
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


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(changes, changes), min_size=1, max_size=6), st.sampled_from([None, 3]))
def test_scratch_reused_pass_after_pass_equals_a_fresh_copy(
    passes: list[tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]],
    log_limit: int | None,
) -> None:
    """The same scratch over many passes (each: placements tried on it, then the host's
    own changes), caught up from the change logs, or, with a 3-entry log that is
    trimmed mid-pass, from the version stamps: always the host's state again."""
    host = ClusterState(NODES)
    if log_limit is not None:
        host._changes.limit = log_limit
    scratch = host.view().scratch()
    for tried, after in passes:
        apply(scratch, tried)
        apply(host, after)
        assert host.view().scratch(reuse=scratch) is scratch
        for name in MUTABLE:
            assert np.array_equal(getattr(scratch, name), getattr(host, name)), name


# Nodes whose CPU and memory run out before their GPUs (every eleventh has plenty, so a
# big request misses more than FIRST_FIT_PROBES nodes first), CPU-only nodes, two GPU
# models, a label and a taint.
PROBED = [
    NodeSpec(
        f"n{i:02d}",
        cpu_milli=64_000 if i % 11 == 10 else (2_000, 8_000)[i % 2],
        mem_mib=64_000 if i % 11 == 10 else (4_000, 64_000)[i % 2],
        gpus=(8, 4, 0, 2)[i % 4],
        gpu_model=("V100", "A100", "", "V100")[i % 4],
        labels={"zone": "z1"} if i % 5 else {},
        taints=(Taint("dedicated", "x"),) if i % 7 == 3 else (),
    )
    for i in range(4 * FIRST_FIT_PROBES + 4)
]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(PROBED) - 1), st.integers(0, 7), st.sampled_from([1, 2])),
        max_size=40,
    ),
    st.sampled_from([(0, 0), (1, 250), (1, 1000), (2, 1000), (4, 1000), (8, 1000)]),
    st.sampled_from([500, 4_000, 16_000]),
    st.sampled_from([None, frozenset({"A100"})]),
    st.booleans(),
    st.booleans(),
)
def test_first_fit_is_the_first_node_of_the_feasibility_mask(
    taken: list[tuple[int, int, int]],
    gpus: tuple[int, int],
    cpu: int,
    models: frozenset[str] | None,
    selector: bool,
    tolerates: bool,
) -> None:
    state = ClusterState(PROBED)
    for index, first, count in taken:
        try:
            state.allocate(index, tuple(range(first, first + count)), 1000, 1_000, 1_000)
        except ValueError:
            continue
    spec = job(
        "j",
        gpus=gpus[0],
        milli=gpus[1],
        cpu=cpu,
        mem=cpu * 4,
        allowed_models=models,
        node_selector={"zone": "z1"} if selector else {},
        tolerations=(Toleration("dedicated", "x"),) if tolerates else (),
    )
    mask = feasible_mask(spec, spec.task, state)
    expected = int(mask.argmax()) if mask.any() else None
    assert first_fit(spec, spec.task, state) == expected


def test_first_fit_past_its_probes_finds_the_node_the_mask_finds() -> None:
    """Hand-worked: a 16-CPU task misses nodes 0-20 on CPU or memory (10 has the CPU
    but no GPU; 3 and 17 are tainted), more than FIRST_FIT_PROBES of them with free
    GPUs, so the rest of the mask is computed: node 21 (4 A100s, 64 CPUs)."""
    state = ClusterState(PROBED)
    spec = job("j", gpus=1, cpu=16_000, mem=16_000)
    assert first_fit(spec, spec.task, state) == 21
    assert int(feasible_mask(spec, spec.task, state).argmax()) == 21


# Three kinds of node, four of each, interleaved.
KINDS = [
    node(
        f"k{i:02d}",
        gpus=(8, 4, 8)[i % 3],
        model=("V100", "A100", "V100")[i % 3],
        cpu=(64_000, 64_000, 32_000)[i % 3],
    )
    for i in range(12)
]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 11),
            st.integers(0, 7),
            st.sampled_from([1, 2, 4]),
            st.sampled_from([250, 500, 1000]),
        ),
        max_size=40,
    ),
    st.sampled_from([(1, 250), (1, 750), (1, 1000), (2, 1000), (4, 1000), (8, 1000)]),
    st.sampled_from([1_000, 16_000, 40_000]),
)
def test_bestfit_on_kind_leaders_picks_what_scoring_every_feasible_node_picks(
    steps: list[tuple[int, int, int, int]], gpus: tuple[int, int], cpu: int
) -> None:
    """Best-fit scores the used feasible nodes and the first free node of each kind;
    the winner is the one that scoring every feasible node finds (lowest index on ties),
    after any history of placements and releases (some nodes free again)."""
    state = ClusterState(KINDS)
    assert state.kinds is not None and len(state.kinds) == 3
    apply(state, steps)
    spec = job("j", gpus=gpus[0], milli=gpus[1], cpu=cpu, mem=cpu)
    policy, ctx = BestFit(), Context(np.random.default_rng(0))
    everyone = feasible_nodes(spec, spec.task, state)
    expected = None
    if everyone.size:
        scores = policy.score(spec, spec.task, state, everyone, ctx)
        expected = int(everyone[int(np.argmax(scores))])
    assert policy.pick_node(spec, spec.task, state, ctx) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([0, 100, 250, 500, 750, 1000]), min_size=8, max_size=8),
    st.integers(1, 8),
    st.sampled_from([(1, 250), (1, 500), (1, 1000), (2, 1000), (4, 1000)]),
)
def test_select_gpus_takes_the_lowest_whole_gpus_or_the_tightest_share(
    free: list[int], count: int, gpus: tuple[int, int]
) -> None:
    row = np.array(free, dtype=np.int64)
    task = TaskRequest(cpu_milli=0, mem_mib=0, num_gpus=gpus[0], gpu_milli=gpus[1])
    mine = row[:count]
    if gpus[1] == MILLI:
        whole = np.flatnonzero(mine == MILLI)
        assume(whole.size >= gpus[0])  # else the node does not fit; callers never ask
        expected = tuple(int(g) for g in whole[: gpus[0]])
    else:
        fits = np.flatnonzero(mine >= gpus[1])
        assume(fits.size > 0)
        expected = (int(fits[np.argmin(mine[fits])]),)
    assert select_gpus(task, row, count) == expected
