"""FGD's default tie-break, the least increase of CPU-starved GPU (policies.cpu_starvation),
worked by hand: equally scored nodes where the hashed tie order alone would pick the node
whose idle GPUs the task's CPU starves."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from policies import ClusterState, TaskRequest
from policies.cpu_starvation import (
    cpu_per_gpu_milli,
    gpu_fed_per_cpu,
    starvation_change,
    starved_milli,
)
from policies.fgd import artifact_scores, tie_ranks
from policies.fragmentation import NodeFragmentation, WorkloadArrays
from policies.target_workload import TargetWorkload, TaskType
from tests.conftest import job, node
from tests.test_fgd import place

GPU_TYPE = TaskType(TaskRequest(4000, 0, 1, 1000), None, 0.5)
CPU_TYPE = TaskType(TaskRequest(2000), None, 0.5)
WORKLOAD = TargetWorkload((GPU_TYPE, CPU_TYPE))
"""ρ = (0.5·4000 + 0.5·2000) CPU milli ÷ (0.5·1000) milli-GPU = 6 CPU milli per milli-GPU."""


def hash_first_pair() -> tuple[str, str]:
    """Two names, the first of them first in the default's hashed tie order."""
    names = ["n0", "n1"]
    first = int(tie_ranks(names).argmin())
    return names[first], names[1 - first]


def test_cpu_per_gpu_milli_worked_by_hand() -> None:
    """ρ per GPU model: CPU over milli-GPU asked by the types that may use it, each
    weighted by its probability (CPU-only types may use every model).
    V100 (any-model types): CPU 0.375·4000 + 0.1875·2000 + 0.1875·8000 = 3375,
    GPU 0.375·1000 + 0.1875·500 = 468.75: ρ = 7.2.
    T4 also takes the T4-only type: (3375 + 0.25·1000) / (468.75 + 0.25·1000) = 3625/718.75.
    With the T4-only type weighted 4 (T4 a quarter of the GPUs), its share per T4 GPU
    quadruples: (3375 + 1000) / (468.75 + 1000); V100 is unchanged."""
    types = (
        TaskType(TaskRequest(4000, 0, 1, 1000), None, 0.375),
        TaskType(TaskRequest(2000), None, 0.1875),
        TaskType(TaskRequest(8000, 0, 1, 500), None, 0.1875),
        TaskType(TaskRequest(1000, 0, 1, 1000), frozenset({"T4"}), 0.25),
    )
    arrays = WorkloadArrays(TargetWorkload(types), ["T4", "V100"])
    rho = cpu_per_gpu_milli(arrays, arrays.prob)
    assert rho[0] == pytest.approx(3625 / 718.75)
    assert rho[1] == pytest.approx(7.2)
    scarce = cpu_per_gpu_milli(arrays, arrays.prob * np.array([1, 1, 1, 4]))
    assert scarce[0] == pytest.approx((3375 + 1000) / (468.75 + 1000))
    assert scarce[1] == pytest.approx(7.2)


def test_starved_milli_worked_by_hand() -> None:
    """U = 4000 idle milli, ρ = 6: 24,000 CPU feeds all of it; 18,000 feeds 3000, so
    1000 starve; no idle GPU starves nothing. A model no GPU type may use (ρ = 0,
    1/ρ taken as 0): all of its idle GPU counts, as the paper counts it all fragmented."""
    state = ClusterState([node("v", 4, "V100"), node("t", 4, "T4"), node("c", 0)])
    fed = gpu_fed_per_cpu(np.array([6.0, 0.0, 0.0]))  # rows: T4, V100, GPU-less
    np.testing.assert_allclose(fed[state.model_idx], [0, 1 / 6, 0])  # nodes: v, t, c
    cpu = np.array([24_000.0, 18_000.0, 0.0, 100.0])
    idle = np.array([4000.0, 4000.0, 0.0, 4000.0])
    rows = np.array([1 / 6, 1 / 6, 1 / 6, 0.0])
    np.testing.assert_allclose(starved_milli(cpu, idle, rows), [0, 1000, 0, 4000])


def test_gpu_task_goes_where_its_cpu_starves_no_idle_gpu() -> None:
    """Nodes `poor` (4 GPUs, 24,000 CPU) and `rich` (4 GPUs, 48,000 CPU), both idle; a
    1-GPU task with 8000 CPU.

    Δ on either: the GPU type still fits (3 whole GPUs, ≥ 16,000 CPU) and no GPU is
    partly used, so its fragment stays 0; the CPU-only type's fragment is all idle GPU,
    4000 → 3000: Δ = 0.5·(−1000) = −500 on both, score int(100σ(0.5)) = 62 on both. A
    tie, and the hashed order puts `poor` first: the old default placed it there.

    Starved GPU at ρ = 6: poor 4000 − 24,000/6 = 0 before, 3000 − 16,000/6 = 333.3 after;
    rich 3000 − 40,000/6 < 0, so 0 after. The task goes to `rich`, leaving `poor` the
    CPU its four GPUs need."""
    poor, rich = hash_first_pair()
    state = ClusterState([node(poor, 4, cpu=24_000), node(rich, 4, cpu=48_000)])
    task = job("x", cpu=8000)
    measure = NodeFragmentation(WORKLOAD)
    measure.sync(state)
    deltas = measure.placement_deltas(state, task.task, np.arange(2))
    np.testing.assert_allclose(deltas[:, 0], [-500, -500])
    assert artifact_scores(deltas).max(axis=1).tolist() == [62, 62]
    rho = cpu_per_gpu_milli(measure.arrays, measure.delta_weights)
    np.testing.assert_allclose(rho, 6.0)
    fed = gpu_fed_per_cpu(rho)[state.model_idx]
    change = starvation_change(state, task.task, np.arange(2), fed)
    np.testing.assert_allclose(change, [1000 / 3, 0], atol=1e-6)
    assert place(state, task, workload=WORKLOAD) == (rich, (0,))


def test_cpu_only_task_goes_where_no_idle_gpu_needs_its_cpu() -> None:
    """Nodes `idle4` (4 idle GPUs, 24,000 CPU) and `busy` (2 GPUs, both allocated,
    16,000 CPU); a CPU-only task of 6000 CPU.

    Δ: on idle4 the GPU type still fits (18,000 ≥ 4000 CPU), so no fragment moves; on
    busy there is no idle GPU. Δ = 0, score 50 on both, and the hashed order puts idle4
    first. Starved GPU at ρ = 6: idle4 0 → 4000 − 18,000/6 = 1000; busy has none to
    starve. The task goes to `busy`."""
    idle4, busy = hash_first_pair()
    state = ClusterState([node(idle4, 4, cpu=24_000), node(busy, 2, cpu=16_000)])
    state.allocate(1, (0, 1), 1000, 0, 0)
    task = job("c", gpus=0, cpu=6000)
    measure = NodeFragmentation(WORKLOAD)
    measure.sync(state)
    np.testing.assert_allclose(measure.placement_deltas(state, task.task, np.arange(2)), 0)
    rho = cpu_per_gpu_milli(measure.arrays, measure.delta_weights)
    fed = gpu_fed_per_cpu(rho)[state.model_idx]
    change = starvation_change(state, task.task, np.arange(2), fed)
    np.testing.assert_allclose(change, [1000, 0], atol=1e-6)
    assert place(state, task, workload=WORKLOAD) == (busy, ())
    assert place(state, task, workload=WORKLOAD, mode="artifact")[0] == "n0"  # first name


def test_a_sharing_task_starves_a_whole_gpu_where_gpus_cannot_be_shared() -> None:
    """Two nodes of 4 idle GPUs and 18,000 CPU at ρ = 6 (3000 of 4000 fed: S = 1000); a
    500m task asking 3000 CPU. Where it shares: U 3500, c 15,000 feeds 2500, S = 1000,
    no change. Where it cannot (`shares_gpus` false) it takes a whole GPU: U 3000,
    S = 3000 − 2500 = 500, so S falls by 500."""
    nodes = [node("s", 4, cpu=18_000), replace(node("w", 4, cpu=18_000), shares_gpus=False)]
    state = ClusterState(nodes)
    fed = np.full(2, 1 / 6)
    change = starvation_change(state, TaskRequest(3000, 0, 1, 500), np.arange(2), fed)
    np.testing.assert_allclose(change, [0, -500], atol=1e-6)
