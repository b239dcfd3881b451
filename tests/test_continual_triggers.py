"""Drift-triggered retraining, worked by hand.

One stream on one A100: ceiling 0.9, floor 0.5, and a decay that halves the gap to the
floor every 600 s (λ = ln 2 / 600 per second), starting at the ceiling. Its one config
has 100 reference-GPU-seconds of work at h = 100, so a retraining closes half the gap
and takes 100 s; the deadline is 100 s after the trigger.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from policies import NodeSpec, TaskRequest, make_policy
from policies.continual import AccuracyCurve, DriftProfile, DriftTrigger, RetrainConfig, StreamSpec
from simulator.continual import STREAM_COLUMNS, ContinualRun
from traces.continual import read_streams, write_streams

NODE = NodeSpec("a100-0", cpu_milli=8000, mem_mib=8000, gpus=1, gpu_model="a100")
COL = {name: i for i, name in enumerate(STREAM_COLUMNS)}
HALF_LIFE_10MIN = 6 * math.log(2)


def stream(trigger: DriftTrigger, **overrides: object) -> StreamSpec:
    fields: dict[str, object] = {
        "id": "s",
        "start_s": 0.0,
        "window_s": 600.0,
        "windows": 2,
        "deadline_s": 100.0,
        "task": TaskRequest(1000, 1000, 1, 1000),
        "throughput": {"a100": 1.0},
        "curve": AccuracyCurve(0.9, 0.5, HALF_LIFE_10MIN, half_gain_gpu_s=100),
        "configs": (RetrainConfig("only", work_gpu_s=100, quality=1.0),),
        "restart_cost_s": 0.0,
        "trigger": trigger,
    }
    fields.update(overrides)
    return StreamSpec(**fields)  # type: ignore[arg-type]


def run(spec: StreamSpec) -> ContinualRun:
    continual = ContinualRun([NODE], [spec], make_policy("fifo"))
    continual.run()
    return continual


def test_drop_trigger_fires_when_decay_reaches_the_threshold() -> None:
    result = run(stream(DriftTrigger(drop=0.1), windows=1))
    first = result.rows[0]
    # 0.9 → 0.8: the gap 0.4 shrinks to 0.3 after 600·log2(4/3) = 249.02 s.
    fired = 600 * math.log2(4 / 3)
    assert first[COL["start_s"]] == pytest.approx(fired)
    assert first[COL["deadline_s"]] == pytest.approx(fired + 100)
    assert first[COL["acc_start"]] == pytest.approx(0.8)
    assert first[COL["gain"]] == pytest.approx(0.05)  # half of the gap 0.1
    assert first[COL["status"]] == "completed"
    assert first[COL["end_s"]] == pytest.approx(fired + 100)


def test_min_gap_spaces_triggers_that_a_retraining_cannot_clear() -> None:
    result = run(stream(DriftTrigger(below=0.85, min_gap_s=400.0)))
    # Below 0.85 after 600·log2(8/7) = 115.6 s. The retraining adds half of 0.05, and by
    # its deployment 100 s later the model has decayed to 0.5 + 0.375·2^(−1/6) = 0.834,
    # still below: the next trigger waits for the gap, at 515.6, then 915.6. A fourth at
    # 1315.6 would have its deadline past the stream's end (1200), so there is none.
    first = 600 * math.log2(8 / 7)
    starts = [r[COL["start_s"]] for r in result.rows]
    assert starts == pytest.approx([first, first + 400, first + 800])
    assert [r[COL["status"]] for r in result.rows] == ["completed"] * 3
    assert result.summary()["retrain_jobs"] == 3


def test_a_shift_below_the_threshold_fires_at_the_shift() -> None:
    flat = AccuracyCurve(0.9, 0.5, 0.0, half_gain_gpu_s=100)
    drift = DriftProfile(shift_prob=1.0, shift_mean=0.2)
    spec = stream(DriftTrigger(below=0.85), curve=flat, drift=drift, drift_seed=16)
    first, second = drift.shifts(2, 16)
    assert first < 0.05 < second  # seed 16: the shift at 600 s crosses 0.85, not the one at 0
    (row,) = run(spec).rows
    assert row[COL["start_s"]] == 600.0
    assert row[COL["acc_start"]] == pytest.approx(0.9 - first - second)


def test_triggered_runs_are_deterministic() -> None:
    spec = stream(DriftTrigger(drop=0.05, min_gap_s=60.0), drift=DriftProfile(0.5, 0.1))
    assert run(spec).rows == run(spec).rows


def test_trigger_crossing_in_closed_form() -> None:
    curve = AccuracyCurve(0.9, 0.5, HALF_LIFE_10MIN, 100)
    assert DriftTrigger.crossing_s(curve, 0.9, 0.7) == pytest.approx(600.0)
    assert DriftTrigger.crossing_s(curve, 0.6, 0.7) == 0.0
    assert DriftTrigger.crossing_s(curve, 0.9, 0.5) == math.inf  # the floor is asymptotic
    assert DriftTrigger(below=0.6, drop=0.1).threshold(0.9) == pytest.approx(0.8)
    assert DriftTrigger(below=0.6, drop=0.1).threshold(0.65) == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"needs below > 0 or drop > 0"):
        DriftTrigger()


def test_trigger_and_inference_columns_round_trip_and_are_optional(tmp_path: Path) -> None:
    spec = stream(DriftTrigger(drop=0.05, min_gap_s=90.0), inference_milli=300)
    path = tmp_path / "streams.csv"
    write_streams([spec, stream(DriftTrigger(below=0.7), id="t")], path)
    assert read_streams(path)[0] == spec
    old = tmp_path / "old.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    keep = header.index("trigger_below")  # the new columns come last
    old.write_text("\n".join(",".join(line.split(",")[:keep]) for line in lines) + "\n")
    legacy = read_streams(old)[0]
    assert legacy.trigger is None and legacy.inference_milli == 0
