"""The fragmentation measure (docs/fgd.md §3) on hand-built nodes, the target-workload
builder on an invented trace, and the incremental cache against a fresh computation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ClusterState, TaskRequest
from policies.fragmentation import (
    Category,
    NodeFragmentation,
    categories,
    cluster_fragmentation,
    node_fragmentation,
)
from policies.target_workload import TargetWorkload, TaskType, build_target_workload
from tests.conftest import node

CPU_ONLY = TaskType(TaskRequest(cpu_milli=4000), None, 0.2)
SHARE_500 = TaskType(TaskRequest(cpu_milli=2000, num_gpus=1, gpu_milli=500), None, 0.3)
TWO_GPUS = TaskType(TaskRequest(cpu_milli=8000, num_gpus=2, gpu_milli=1000), None, 0.3)
T4_ONLY = TaskType(TaskRequest(cpu_milli=1000, num_gpus=1, gpu_milli=1000), frozenset({"T4"}), 0.2)
WORKLOAD = TargetWorkload((CPU_ONLY, SHARE_500, TWO_GPUS, T4_ONLY))


def set_free(state: ClusterState, index: int, cpu_free: int, gpu_free: list[int]) -> None:
    """Allocate on node `index` until it has exactly the given free CPU and GPU."""
    for gpu, free in enumerate(gpu_free):
        if free < 1000:
            state.allocate(index, (gpu,), 1000 - free, 0, 0)
    state.allocate(index, (), 0, int(state.cpu_free[index]) - cpu_free, 0)


@pytest.fixture
def hand_built() -> ClusterState:
    state = ClusterState(
        [node(f"n{i}", 4, cpu=32_000) for i in range(4)] + [node("t4", 2, model="T4")]
    )
    set_free(state, 0, 10_000, [400, 0, 1000, 1000])
    set_free(state, 1, 3_000, [1000, 1000, 1000, 300])
    set_free(state, 2, 1_000, [200, 200, 0, 0])
    set_free(state, 3, 20_000, [300, 1000, 0, 0])
    set_free(state, 4, 8_000, [1000, 1000])
    return state


def test_every_category_of_the_definition(hand_built: ClusterState) -> None:
    cat = Category
    expected = [
        # CPU-only         share 500         2 × 1000           T4 only
        [cat.XL_SATISFIED, cat.Q3_SATISFIED, cat.Q3_SATISFIED, cat.NO_ACCESS],  # n0
        [cat.XR_LACK_CPU, cat.Q3_SATISFIED, cat.Q4_LACK_CPU, cat.NO_ACCESS],  # n1
        [cat.XR_LACK_CPU, cat.Q1_LACK_BOTH, cat.Q1_LACK_BOTH, cat.NO_ACCESS],  # n2
        [cat.XL_SATISFIED, cat.Q3_SATISFIED, cat.Q2_LACK_GPU, cat.NO_ACCESS],  # n3
        [cat.XL_SATISFIED, cat.Q3_SATISFIED, cat.Q3_SATISFIED, cat.Q3_SATISFIED],  # t4
    ]
    assert categories(hand_built, WORKLOAD).tolist() == expected


def test_fragmented_amounts_worked_by_hand(hand_built: ClusterState) -> None:
    # n0 idle 2400: CPU-only and T4 types see all of it; the two GPU types that run
    # there see only the GPUs below their request (400 + 0).
    n0 = 0.2 * 2400 + 0.3 * 400 + 0.3 * 400 + 0.2 * 2400
    # n1 idle 3300: share 500 runs (only the 300 GPU is a fragment); 2-GPU lacks CPU.
    n1 = 0.2 * 3300 + 0.3 * 300 + 0.3 * 3300 + 0.2 * 3300
    n2 = 400.0  # nothing runs: every type sees the 400 idle
    # n3 idle 1300: share 500 leaves the 300 GPU; 2-GPU lacks a second free GPU.
    n3 = 0.2 * 1300 + 0.3 * 300 + 0.3 * 1300 + 0.2 * 1300
    # T4 node: only the CPU-only type finds the 2000 idle fragmented.
    t4 = 0.2 * 2000
    values = node_fragmentation(hand_built, WORKLOAD)
    assert values == pytest.approx([n0, n1, n2, n3, t4])
    amount, ratio = cluster_fragmentation(hand_built, WORKLOAD)
    total = n0 + n1 + n2 + n3 + t4
    assert amount == pytest.approx(100 * total / (18 * 1000))
    assert ratio == pytest.approx(100 * total / (2400 + 3300 + 400 + 1300 + 2000))


def test_an_empty_cluster_is_fragmented_only_for_cpu_only_tasks() -> None:
    state = ClusterState([node("a", 8), node("b", 2, model="T4")])
    amount, ratio = cluster_fragmentation(state, WORKLOAD)
    # Only CPU-only (p .2) everywhere and T4-only (p .2) on the V100 node count.
    assert ratio == pytest.approx(100 * (0.2 * 10_000 + 0.2 * 8000) / 10_000)
    assert amount == pytest.approx(ratio)


INVENTED_TRACE = (
    [(TaskRequest(1000, 100, 1, 500), None)] * 5
    + [(TaskRequest(2000, 300, 1, 1000), None)] * 2
    + [(TaskRequest(2000, 900, 1, 1000), None)]  # same type: memory is not part of it
    + [(TaskRequest(500, 100), None)]
    + [(TaskRequest(1000, 100, 2, 1000), frozenset({"A"}))]
)


def shapes(workload: TargetWorkload) -> list[tuple[int, int, int, object, float]]:
    return [
        (t.task.cpu_milli, t.task.num_gpus, t.task.gpu_milli, t.allowed_models, t.probability)
        for t in workload.types
    ]


def test_target_workload_covers_95_percent_including_cpu_only() -> None:
    got = shapes(build_target_workload(INVENTED_TRACE))
    # 5 + 3 = 8 of 10 tasks < 9.5; the two singletons tie on count and the artifact's
    # order puts the larger CPU request first: 9 < 9.5, then the CPU-only type: 10.
    assert got == [
        (1000, 1, 500, None, 0.5),
        (2000, 1, 1000, None, 0.3),
        (1000, 2, 1000, frozenset({"A"}), 0.1),
        (500, 0, 0, None, 0.1),
    ]


def test_target_workload_is_cut_and_renormalised() -> None:
    got = shapes(build_target_workload(INVENTED_TRACE, coverage=0.85))
    assert [s[:4] for s in got] == [
        (1000, 1, 500, None),
        (2000, 1, 1000, None),
        (1000, 2, 1000, frozenset({"A"})),
    ]
    assert [s[4] for s in got] == pytest.approx([5 / 9, 3 / 9, 1 / 9])
    assert len(build_target_workload(INVENTED_TRACE, coverage=0.8).types) == 2


def test_target_workload_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="cannot build a target workload from no tasks"):
        build_target_workload([])
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\]"):
        build_target_workload(INVENTED_TRACE, coverage=0.0)
    with pytest.raises(ValueError, match="probabilities must be >= 0 and sum to 1"):
        TargetWorkload((TaskType(TaskRequest(1000), None, 0.5),))


allocations = st.lists(
    st.tuples(
        st.integers(0, 3),  # node
        st.integers(0, 3),  # GPU
        st.integers(1, 1000),  # milli
        st.integers(0, 9000),  # CPU
    ),
    max_size=25,
)


def random_cluster(steps: list[tuple[int, int, int, int]]) -> ClusterState:
    """Three 4-GPU V100 nodes (n2 cannot share its GPUs) and a 2-GPU T4 node."""
    nodes = [node(f"n{i}", 4, cpu=32_000) for i in range(3)] + [node("t", 2, "T4")]
    nodes[2] = replace(nodes[2], shares_gpus=False)
    state = ClusterState(nodes)
    for index, gpu, milli, cpu in steps:
        gpu %= int(state.gpu_count[index])
        if state.gpu_free[index, gpu] >= milli and state.cpu_free[index] >= cpu:
            state.allocate(index, (gpu,), milli, cpu, 0)
    return state


@settings(max_examples=60, deadline=None)
@given(first=allocations, second=allocations)
def test_incremental_cache_matches_a_fresh_computation(first, second) -> None:
    state = random_cluster(first)
    cache = NodeFragmentation(WORKLOAD)
    cache.sync(state)
    for index, gpu, milli, cpu in second:
        gpu %= int(state.gpu_count[index])
        if state.gpu_free[index, gpu] >= milli and state.cpu_free[index] >= cpu:
            state.allocate(index, (gpu,), milli, cpu, 0)
        cache.sync(state)
    fresh = node_fragmentation(state, WORKLOAD)
    assert cache.node_values() == pytest.approx(fresh)
    assert cache.cluster_amount() == pytest.approx(fresh.sum())
    assert cache.idle_milli() == int(state.gpu_free.sum())


@settings(max_examples=60, deadline=None)
@given(
    steps=allocations,
    task=st.sampled_from(
        [
            TaskRequest(2000, 0, 1, 300),
            TaskRequest(1000, 0, 1, 1000),
            TaskRequest(8000, 0, 2, 1000),
            TaskRequest(6000),
        ]
    ),
)
def test_placement_deltas_equal_the_change_after_placing(steps, task) -> None:
    state = random_cluster(steps)
    cache = NodeFragmentation(WORKLOAD)
    cache.sync(state)
    nodes = np.arange(state.num_nodes)
    deltas = cache.placement_deltas(state, task, nodes)
    before = node_fragmentation(state, WORKLOAD)
    for index in nodes:
        free = state.gpu_free[index]
        slots = range(free.size) if task.is_sharing else [0]
        for slot in slots:
            if task.is_sharing:
                gpus: tuple[int, ...] = (slot,) if free[slot] >= task.gpu_milli else ()
                if not gpus:
                    assert deltas[index, slot] == np.inf
                    continue
            else:
                whole = np.flatnonzero(free[: state.gpu_count[index]] == 1000)
                gpus = tuple(int(g) for g in whole[: task.num_gpus])
                if len(gpus) < task.num_gpus:
                    continue
            if state.cpu_free[index] < task.cpu_milli:
                continue
            trial = state.copy()
            trial.allocate(int(index), gpus, task.gpu_milli, task.cpu_milli, 0)
            after = node_fragmentation(trial, WORKLOAD)[index]
            # Where GPUs cannot be shared the task took a whole GPU (allocate), and the
            # part it does not use is lost to each type that uses GPUs.
            lost = 0.0
            if task.is_sharing and not state.shares_gpus[index]:
                lost = (1000 - task.gpu_milli) * sum(
                    t.probability for t in WORKLOAD.types if t.task.num_gpus
                )
            assert deltas[index, slot] == pytest.approx(after - before[index] + lost, abs=1e-9)
