"""A placement policy remembers each pending job's request shape and verdict from one
pass to the next (`policies.base.QueueMemo`); what it decides must not depend on that."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from policies import (
    ClusterState,
    Context,
    JobSpec,
    JobStatus,
    JobView,
    Place,
    Snapshot,
    Unschedulable,
    make_policy,
)
from policies.base import Policy
from tests.conftest import job, node


def decide(policy: Policy, state: ClusterState, specs: list[JobSpec]) -> tuple[object, ...]:
    pending = [JobView(spec=s, status=JobStatus.PENDING) for s in specs]
    snapshot = Snapshot(cluster=state.view(), running=[], pending=pending, now=0.0)
    return policy.schedule(snapshot, Context(np.random.default_rng(0))).decisions


def test_a_job_given_a_new_request_under_the_same_id_is_judged_by_the_new_one() -> None:
    state = ClusterState([node("n0", 4)])
    policy = make_policy("bestfit")
    first = decide(policy, state, [job("a", gpus=8)])
    assert first == (Unschedulable("a", "no node fits the request", "bestfit"),)
    # "b" asks for what "a" asked before and fails first; "a" now asks for 2 GPUs and
    # fits (remembering its old shape would skip it as a request already failed).
    second = decide(policy, state, [job("b", gpus=8), job("a", gpus=2)])
    assert second[0] == Unschedulable("b", "no node fits the request", "bestfit")
    assert isinstance(second[1], Place) and second[1].placement.tasks[0].gpus == (0, 1)


SHAPES = [(1, 1000, 1000), (2, 1000, 1000), (4, 1000, 8000), (1, 500, 1000), (8, 1000, 1000)]


@st.composite
def passes(draw: st.DrawFn) -> list[tuple[list[tuple[int, int]], list[JobSpec]]]:
    """A few passes: GPUs held on 3 nodes of 4 GPUs, and a queue in which ids recur,
    sometimes with another request than before."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        held = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=10))
        queue = []
        for i in draw(st.lists(st.integers(0, 7), max_size=10, unique=True)):
            gpus, milli, cpu = SHAPES[draw(st.integers(0, len(SHAPES) - 1))]
            queue.append(job(f"j{i}", gpus=gpus, milli=milli, cpu=cpu))
        out.append((held, queue))
    return out


@given(
    passes(),
    st.sampled_from([("fifo", {}), ("fifo", {"blocking": "false"}), ("bestfit", {}), ("fgd", {})]),
)
def test_a_policy_kept_across_passes_decides_as_a_fresh_one(
    sequence: list[tuple[list[tuple[int, int]], list[JobSpec]]],
    chosen: tuple[str, dict[str, str]],
) -> None:
    name, options = chosen
    kept = make_policy(name, options)
    for held, queue in sequence:
        state = ClusterState([node(f"n{i}", 4) for i in range(3)])
        for n, gpu in set(held):
            state.allocate(n, (gpu,), 1000, 0, 0)
        assert decide(kept, state, queue) == decide(make_policy(name, options), state, queue)
