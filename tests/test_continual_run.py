"""Window, deadline and accuracy bookkeeping of continual runs, worked by hand.

One stream on one A100: accuracy 0.5 at the start, ceiling 0.9, no decay unless said;
its single config has 100 reference-GPU-seconds of work at h = 100, so a retraining
closes half the gap (gain 0.2 from 0.5) and takes 100 s on the whole GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from policies import (
    Context,
    NodeSpec,
    Place,
    Placement,
    Policy,
    Preempt,
    SchedulingResult,
    Snapshot,
    TaskPlacement,
    TaskRequest,
    make_policy,
)
from policies.continual import AccuracyCurve, RetrainConfig, StreamSpec
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.conftest import job_rows

NODE = NodeSpec("a100-0", cpu_milli=8000, mem_mib=8000, gpus=1, gpu_model="a100")
COL = {name: i for i, name in enumerate(STREAM_COLUMNS)}


def stream(**overrides: object) -> StreamSpec:
    fields: dict[str, object] = {
        "id": "s",
        "start_s": 0.0,
        "window_s": 600.0,
        "windows": 1,
        "deadline_s": 600.0,
        "task": TaskRequest(1000, 1000, 1, 1000),
        "throughput": {"a100": 1.0},
        "curve": AccuracyCurve(ceiling=0.9, floor=0.5, decay_per_h=0.0, half_gain_gpu_s=100),
        "configs": (RetrainConfig("only", work_gpu_s=100, quality=1.0),),
        "initial_accuracy": 0.5,
        "restart_cost_s": 10.0,
    }
    fields.update(overrides)
    return StreamSpec(**fields)  # type: ignore[arg-type]


class Scripted(Policy):
    """Starts the first waiting job on GPU 0 at each `place_at` time and preempts every
    running job at each `preempt_at` time (no `name`: not registered)."""

    def __init__(self, place_at: Sequence[float], preempt_at: Sequence[float]) -> None:
        super().__init__()
        self.place_at = tuple(place_at)
        self.preempt_at = tuple(preempt_at)

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        now = snapshot.now
        decisions: list[Place | Preempt] = []
        if now in self.preempt_at:
            decisions += [Preempt(j.id, "script") for j in snapshot.running]
        elif now in self.place_at and snapshot.pending:
            where = Placement((TaskPlacement(NODE.name, (0,), 1000),))
            decisions.append(Place(snapshot.pending[0].id, where, "script"))
        later = [t for t in (*self.place_at, *self.preempt_at) if t > now]
        return SchedulingResult(tuple(decisions), wake_at=min(later) if later else None)


def run(streams: Sequence[StreamSpec], policy: Policy) -> ContinualRun:
    continual = ContinualRun([NODE], streams, policy)
    continual.run()
    return continual


def test_two_windows_under_fifo() -> None:
    result = run([stream(windows=2)], make_policy("fifo"))
    first, second = result.rows
    # Window 0: 0.5 for 100 s, then 0.7 (0.5 + 0.4·½): (50 + 350) / 600.
    assert first[COL["status"]] == "completed"
    assert first[COL["end_s"]] == pytest.approx(100.0)
    assert first[COL["gpu_s"]] == pytest.approx(100.0)
    assert first[COL["mean_acc"]] == pytest.approx(400 / 600)
    assert first[COL["acc_end"]] == pytest.approx(0.7)
    # Window 1 starts at 0.7 and closes half of the remaining 0.2: 0.8 from t = 700.
    assert second[COL["acc_start"]] == pytest.approx(0.7)
    assert second[COL["gain"]] == pytest.approx(0.1)
    assert second[COL["mean_acc"]] == pytest.approx((70 + 400) / 600)
    summary = result.summary()
    assert summary["mean_accuracy"] == pytest.approx(870 / 1200)
    assert summary["deadline_miss_rate"] == 0.0
    assert summary["retrain_gpu_hours"] == pytest.approx(200 / 3600)
    assert summary["retrain_avg_jct_s"] == pytest.approx(100.0)


def test_preempted_job_resumes_with_its_progress_and_pays_the_restart() -> None:
    result = run([stream()], Scripted(place_at=(0.0, 200.0), preempt_at=(50.0,)))
    (row,) = result.rows
    # 50 s done before the preemption; back at 200, 10 s restart, 50 s more: done at 260.
    assert row[COL["status"]] == "completed"
    assert row[COL["end_s"]] == pytest.approx(260.0)
    assert row[COL["jct_s"]] == pytest.approx(260.0)
    assert row[COL["restarts"]] == 1
    assert row[COL["gpu_s"]] == pytest.approx(50.0 + 60.0)  # held through the restart
    assert row[COL["mean_acc"]] == pytest.approx((0.5 * 260 + 0.7 * 340) / 600)


def test_deadline_withdraws_a_preempted_job_that_cannot_finish() -> None:
    result = run([stream(deadline_s=250.0)], Scripted(place_at=(0.0, 200.0), preempt_at=(50.0,)))
    (row,) = result.rows
    # At 250 it has done 50 + 40 of 100: withdrawn, the stale model stays.
    assert row[COL["status"]] == "expired"
    assert row[COL["end_s"]] is None
    assert row[COL["gpu_s"]] == pytest.approx(100.0)
    assert row[COL["mean_acc"]] == pytest.approx(0.5)
    assert result.summary()["deadline_miss_rate"] == 1.0
    assert result.sim.cluster.alloc_milli == 0  # its GPU was given back
    statuses = {i: r["status"] for i, r in job_rows(result.sim.recorder).items()}
    assert statuses == {"s/w00000": "expired"}


def test_a_job_finishing_exactly_at_its_deadline_meets_it() -> None:
    result = run([stream(deadline_s=100.0, windows=2)], make_policy("fifo"))
    assert [r[COL["status"]] for r in result.rows] == ["completed", "completed"]
    assert result.rows[1][COL["acc_start"]] == pytest.approx(0.7)


def test_windows_at_the_ceiling_submit_no_job() -> None:
    result = run([stream(initial_accuracy=0.9, windows=3)], make_policy("fifo"))
    assert [r[COL["status"]] for r in result.rows] == ["none"] * 3
    summary = result.summary()
    assert summary["retrain_jobs"] == 0 and summary["deadline_miss_rate"] == 0.0
    assert summary["mean_accuracy"] == pytest.approx(0.9)


def test_stale_accuracy_is_integrated_exactly() -> None:
    curve = AccuracyCurve(0.9, 0.5, decay_per_h=6 * math.log(2), half_gain_gpu_s=100)
    result = run([stream(initial_accuracy=0.9, curve=curve)], make_policy("fifo"))
    (row,) = result.rows
    # At the ceiling, so no job; the gap halves over the window: 300 + 120/ln 2 over 600 s.
    assert row[COL["mean_acc"]] == pytest.approx((300 + 120 / math.log(2)) / 600)
    assert row[COL["acc_end"]] == pytest.approx(0.7)


def test_shift_at_an_opening_lowers_the_start_accuracy() -> None:
    from policies.continual import DriftProfile

    drift = DriftProfile(shift_prob=1.0, shift_mean=0.05)
    shifted = stream(initial_accuracy=0.9, drift=drift, drift_seed=3, windows=2)
    result = run([shifted], make_policy("fifo"))
    drops = drift.shifts(2, 3)
    assert result.rows[0][COL["acc_start"]] == pytest.approx(max(0.5, 0.9 - drops[0]))
