"""Adaptive jobs: profile tables, the training agent, and progress in the engine across a
reallocation with its restart delay. Profiles here are small invented tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from policies import Context, Elasticity, JobSpec, Place, Resize, SchedulingResult, TaskRequest
from policies.base import RoundPolicy, Snapshot
from policies.elastic import (
    ADAPTIVE,
    EXACT_FIT,
    RIGID,
    SCALE_GPUS,
    AdaptiveTraining,
    GoodputHints,
)
from policies.goodput import StepObservation, fit_perf_params, fit_perf_params_as_adaptdl
from policies.jobs import AllocationShape, Placement, TaskPlacement
from policies.perf_models import AppProfile, EpochTable, StepRow, StepTable, canonical_placement
from simulator.clusters import NodeGroup, build_nodes
from simulator.engine import EngineOptions, Simulation
from tests.conftest import job_rows


def step_table(model: str = "gpu") -> StepTable:
    # Step time = 1 s per 32 samples per GPU, no sync cost, on 1 or 2 GPUs of one node.
    rows = [
        StepRow(placement, bsz, bsz / 32, 0.0) for placement in ((1,), (2,)) for bsz in (16, 32)
    ]
    return StepTable(model, rows, [])


def profile(batch_sizes: Sequence[int] = (32,), restart: float = 10.0) -> AppProfile:
    epochs = EpochTable(
        batch_sizes=tuple(batch_sizes),
        progress=np.array([[100.0, 200.0]] * len(batch_sizes)),
        grad_sqr=np.ones((len(batch_sizes), 2)),
        grad_var=np.zeros((len(batch_sizes), 2)),
    )
    return AppProfile("toy", epochs, {"gpu": step_table()}, restart_delay_s=restart)


def shape(gpus: int) -> AllocationShape:
    return AllocationShape("gpu", gpus, 1, gpus_per_node=(gpus,), gpu_models=("gpu",))


def test_placements_are_keyed_by_their_smallest_rotation() -> None:
    assert canonical_placement((4, 1, 3)) == (1, 3, 4)
    assert canonical_placement((2, 0, 1)) == (1, 2)


def test_step_table_interpolates_in_the_batch_and_clamps_outside() -> None:
    table = step_table()
    assert table.step_sync((1,), 24) == pytest.approx((0.75, 0.0))
    assert table.step_sync((1,), 64) == pytest.approx((1.0, 0.0))  # clamped to 32
    assert table.max_local_on((2,)) == 32
    assert table.probe_throughput == pytest.approx(32 / 1.0)


def test_gradient_statistics_interpolate_per_epoch_and_clamp() -> None:
    epochs = EpochTable(
        batch_sizes=(32, 128),
        progress=np.array([[100.0, 200.0], [100.0, 200.0]]),
        grad_sqr=np.array([[1.0, 2.0], [3.0, 6.0]]),  # rows: batch sizes; columns: epochs
        grad_var=np.array([[10.0, 20.0], [30.0, 60.0]]),
    )
    # Epoch 1 at batch 64, a third of the way from 32 to 128: sqr 2 + 4/3, var 20 + 40/3.
    assert epochs.grad_stats(64, 1) == pytest.approx((10 / 3, 100 / 3))
    assert epochs.grad_stats(16, 0) == (1.0, 10.0)  # below the profiled batches
    assert epochs.grad_stats(512, 0) == (3.0, 30.0)  # above
    # Gain at 64 (scale 2): (var + sqr) / (var/2 + sqr) = (110/3) / (50/3 + 10/3).
    assert epochs.gain(64, 1) == pytest.approx(110 / 60)


def test_epoch_table_boundaries_and_completion() -> None:
    epochs = profile().epochs
    assert epochs.total == 200.0
    assert epochs.epoch_of(99.0) == 0 and epochs.epoch_of(100.0) == 1
    assert epochs.next_boundary(150.0) == 200.0
    assert epochs.next_boundary(200.0) is None


def test_rigid_job_runs_its_tuned_batch() -> None:
    work = AdaptiveTraining(profile(), target_replicas=2, target_batch_size=32, mode=RIGID)
    # 32 samples over 2 GPUs: 16 each, 0.5 s per step, gain 1 (batch = initial batch).
    assert work.rate(shape(2), 0.0) == pytest.approx(2.0)
    assert work.rate(shape(1), 0.0) == pytest.approx(1.0)


def test_agent_learns_a_model_and_reports_hints() -> None:
    work = AdaptiveTraining(profile((32, 64)), target_replicas=2, target_batch_size=64)
    agent = work.agent()
    assert agent.hints().perf == {} and agent.hints().grad is None
    agent.rate(shape(2), 0.0)
    hints = agent.hints()
    assert isinstance(hints, GoodputHints) and hints.mode == ADAPTIVE
    assert set(hints.perf) == {"gpu"} and hints.max_profiled_replicas == {"gpu": 2}
    assert hints.grad is not None
    # A second agent of the same work starts from scratch: runs never share state.
    assert work.agent().hints().perf == {}


def test_agent_fits_as_adaptdl_from_scratch_on_every_new_point() -> None:
    # Strong scaling keeps the batch at 32: 32 on one GPU (1 s a step), then 16 on each
    # of two (0.5 s), no sync time in this table.
    work = AdaptiveTraining(profile(), target_replicas=2, target_batch_size=32, mode=SCALE_GPUS)
    agent = work.agent()
    seen = [StepObservation(1, 1, 32, 1.0, 0.0), StepObservation(1, 2, 16, 0.5, 0.0)]
    agent.rate(shape(1), 0.0)
    assert agent.hints().perf["gpu"] == fit_perf_params_as_adaptdl(seen[:1])
    agent.rate(shape(2), 0.0)
    assert agent.hints().perf["gpu"] == fit_perf_params_as_adaptdl(seen)


def test_exact_fit_agent_warm_starts_its_refits() -> None:
    work = AdaptiveTraining(profile(), 2, 32, mode=SCALE_GPUS, fit=EXACT_FIT)
    agent = work.agent()
    seen = [StepObservation(1, 1, 32, 1.0, 0.0), StepObservation(1, 2, 16, 0.5, 0.0)]
    agent.rate(shape(1), 0.0)
    agent.rate(shape(2), 0.0)
    first = fit_perf_params(seen[:1])
    assert agent.hints().perf["gpu"] == fit_perf_params(seen, start=first)


def test_unknown_model_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="model fit 'newton'"):
        AdaptiveTraining(profile(), 1, 32, fit="newton")


def test_rigid_agent_does_not_model_itself() -> None:
    agent = AdaptiveTraining(profile(), 1, 32, mode=RIGID).agent()
    agent.rate(shape(1), 0.0)
    assert agent.hints().perf == {}


class Scripted(RoundPolicy):
    """Place at t=0 on one GPU, move to two GPUs at t=50, then leave the job alone."""

    def __init__(self) -> None:
        super().__init__()
        self.round_s = 50.0

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        if snapshot.pending and snapshot.now == 0.0:
            job = snapshot.pending[0]
            return SchedulingResult((Place(job.id, gpus_on(1), "start on one GPU"),))
        if snapshot.running and snapshot.now == 50.0:
            job = snapshot.running[0]
            return SchedulingResult((Resize(job.id, gpus_on(2), "grow to two GPUs"),))
        return SchedulingResult()


Scripted.name = "test-scripted-elastic"  # after the body: kept out of the global registry


def elastic_job(work: AdaptiveTraining) -> JobSpec:
    """One GPU per replica, 1 or 2 replicas (Scripted resizes it to 2)."""
    task = TaskRequest(num_gpus=1, gpu_milli=1000)
    return JobSpec("job", 0.0, task, work, restart_cost_s=10.0, elastic=Elasticity(1, 2))


def gpus_on(count: int) -> Placement:
    return Placement(tuple(TaskPlacement("gpu-0", (g,), 1000) for g in range(count)))


def test_progress_across_a_reallocation_includes_the_restart_delay() -> None:
    # Rigid job, 200 progress units (two epochs of 100), batch 32, restart delay 10 s.
    # t=0: starts on 1 GPU, pays 10 s, then 1 unit/s → 40 units by t=50.
    # t=50: moves to 2 GPUs (16 each, 0.5 s/step → 2 units/s), pays 10 s again;
    # from t=60 the remaining 160 units take 80 s (crossing the epoch at t=90): done at 140.
    work = AdaptiveTraining(profile(restart=10.0), 1, 32, mode=RIGID)
    spec = elastic_job(work)
    nodes = build_nodes([NodeGroup("gpu", 1, 2)])
    sim = Simulation(nodes, [spec], Scripted(), EngineOptions(startup_delay=True))
    recorder = sim.run()
    row = job_rows(recorder)["job"]
    assert row["end_s"] == pytest.approx(140.0)
    assert row["restarts"] == 1  # the resize
    assert row["attained_gpu_s"] == pytest.approx(1 * 50 + 2 * 90)  # delays included


def test_without_startup_delay_the_first_start_is_free() -> None:
    work = AdaptiveTraining(profile(restart=10.0), 1, 32, mode=RIGID)
    spec = elastic_job(work)
    sim = Simulation(build_nodes([NodeGroup("gpu", 1, 2)]), [spec], Scripted())
    # 50 units by t=50, then 150 units at 2/s after the 10 s delay: 60 + 75 = 135.
    assert job_rows(sim.run())["job"]["end_s"] == pytest.approx(135.0)
