"""FGD weighs Δ on the used feasible nodes and one free node of each kind, not on every
free node: free nodes of one kind have the same Δ, so only the one that the mode's
tie-break puts first can win. These properties compare that shortcut with the
definition (every feasible node weighed) after any history of placements and releases,
with a live workload whose shares move every pass."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ClusterState, Context, JobSpec, JobStatus, JobView, Snapshot, TaskRequest
from policies.decisions import Place
from policies.fgd import MODES, Fgd, FgdConfig, tie_ranks
from policies.jobs import TaskPlacement
from policies.placement import feasible_kind_leaders, feasible_mask, feasible_nodes
from policies.task_mix import task_key
from tests.conftest import job, node

# Three kinds of node, five of each, interleaved; names whose hashed tie order is not
# their index order.
KIND_SPECS = ((8, "V100", 64_000), (4, "A100", 64_000), (8, "V100", 32_000))
KINDS = [node(f"node-{i:02d}", *KIND_SPECS[i % 3]) for i in range(15)]
SHAPES = [
    TaskRequest(cpu, 10, gpus, milli)
    for cpu, gpus, milli in (
        (4_000, 1, 250),
        (4_000, 1, 500),
        (8_000, 1, 1000),
        (16_000, 2, 1000),
        (30_000, 4, 1000),
        (20_000, 0, 0),
    )
]
KEYS = [task_key(task, None) for task in SHAPES]


class EveryFeasibleNode(Fgd):
    """FGD by its definition: Δ weighed on every feasible node."""

    def _candidates(self, spec: JobSpec, task: TaskRequest, state: ClusterState) -> np.ndarray:
        return feasible_nodes(spec, task, state)


# A step: (shape, the task mix's counts, release an earlier task instead?).
STEPS = st.lists(
    st.tuples(
        st.integers(0, len(SHAPES) - 1),
        st.lists(st.integers(0, 9), min_size=len(SHAPES), max_size=len(SHAPES)),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(steps=STEPS, mode=st.sampled_from(MODES))
def test_fgd_on_kind_leaders_places_as_weighing_every_feasible_node(steps, mode) -> None:
    """Both see the same snapshots (the workload taken from a task mix that changes
    every pass, so Δ is reweighed between tasks) and decide the same node and GPUs."""
    state = ClusterState(KINDS)
    fast, definition = Fgd(FgdConfig(mode=mode)), EveryFeasibleNode(FgdConfig(mode=mode))
    ctx = Context(np.random.default_rng(0))
    held: list[tuple[TaskRequest, TaskPlacement]] = []
    for i, (shape, counts, release) in enumerate(steps):
        if release and held:
            task, placed = held.pop(i % len(held))
            index = state.node_index[placed.node]
            state.release(index, placed.gpus, placed.gpu_milli, task.cpu_milli, task.mem_mib)
            continue
        task = SHAPES[shape]
        spec = JobSpec(f"j{i}", 0.0, task, job("x").work)
        mix = dict(zip(KEYS, counts, strict=True))
        mix[KEYS[shape]] += 1  # the pending task itself
        snapshot = Snapshot(state.view(), [], [JobView(spec, JobStatus.PENDING)], 0.0, mix)
        decided = fast.schedule(snapshot, ctx).decisions
        assert decided == definition.schedule(snapshot, ctx).decisions
        if isinstance(decided[0], Place):
            (placed,) = decided[0].placement.tasks
            index = state.node_index[placed.node]
            state.allocate(index, placed.gpus, placed.gpu_milli, task.cpu_milli, task.mem_mib)
            held.append((task, placed))


@settings(max_examples=100, deadline=None)
@given(
    used_share=st.sampled_from([0.0, 0.5, 0.9, 0.98, 1.0]),
    shape=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**16),
)
def test_kind_leaders_in_an_order_are_each_kinds_first_free_node_in_it(
    used_share, shape, seed
) -> None:
    """With an order (a permutation of the nodes), the leaders are the used feasible
    nodes and, per kind, the feasible free node that comes first in the order; on 300
    nodes, so with most in use a kind's first free node lies past the order's head."""
    state = ClusterState([node(f"node-{i:03d}", *KIND_SPECS[i % 3]) for i in range(300)])
    rng = np.random.default_rng(seed)
    for index in np.flatnonzero(rng.random(state.num_nodes) < used_share).tolist():
        state.allocate(index, (0,), 500, 1000, 10)  # in use, with room left
    order = rng.permutation(state.num_nodes)
    spec = JobSpec("j", 0.0, shape, job("x").work)
    feasible = feasible_mask(spec, shape, state)
    expected = {i for i in range(state.num_nodes) if feasible[i] and state.in_use[i]}
    assert state.kinds is not None
    for kind in state.kinds:
        free_here = [int(i) for i in order if kind[i] and feasible[i] and not state.in_use[i]]
        expected |= set(free_here[:1])
    leaders = feasible_kind_leaders(spec, shape, state, order)
    assert leaders.tolist() == sorted(expected)


def test_within_each_kind_the_tie_order_is_not_the_name_order() -> None:
    """So the property above tells a leader by tie order from the first by name."""
    ranks = tie_ranks([n.name for n in KINDS])
    for kind in range(3):
        members = list(range(kind, len(KINDS), 3))
        assert min(members, key=lambda i: ranks[i]) != members[0]
