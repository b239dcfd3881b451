"""The continual-training accuracy model against hand-computed values and its properties."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import AllocationShape, TaskRequest
from policies.continual import (
    AccuracyCurve,
    DriftProfile,
    RetrainConfig,
    RetrainingWork,
    StreamSpec,
    WindowInfo,
    WindowOpening,
    plan_configs,
    speedup,
    window_info,
)

HALF_LIFE_10MIN = 6 * math.log(2)
"""decay_per_h for which the gap above the floor halves every 600 s."""


def test_stale_accuracy_halves_its_gap_to_the_floor_each_half_life() -> None:
    curve = AccuracyCurve(ceiling=0.9, floor=0.5, decay_per_h=HALF_LIFE_10MIN, half_gain_gpu_s=1)
    assert curve.decayed(0.9, 600) == pytest.approx(0.7)  # 0.5 + 0.4 / 2
    assert curve.decayed(0.9, 1200) == pytest.approx(0.6)  # 0.5 + 0.4 / 4
    assert curve.decayed(0.9, 0) == pytest.approx(0.9)


def test_integral_of_decaying_accuracy() -> None:
    curve = AccuracyCurve(0.9, 0.5, HALF_LIFE_10MIN, 1)
    # 0.5·600 + 0.4·(1 − 1/2)/λ with λ = ln2/600: 300 + 120/ln 2
    assert curve.integral(0.9, 600) == pytest.approx(300 + 120 / math.log(2))


def test_without_decay_accuracy_holds() -> None:
    curve = AccuracyCurve(0.9, 0.5, 0.0, 1)
    assert curve.decayed(0.8, 10_000) == 0.8
    assert curve.integral(0.8, 600) == pytest.approx(480)


def test_gain_closes_a_share_of_the_gap() -> None:
    curve = AccuracyCurve(0.9, 0.4, 0.5, half_gain_gpu_s=100)
    half = RetrainConfig("half", work_gpu_s=100, quality=1.0)
    big = RetrainConfig("big", work_gpu_s=300, quality=0.8)
    assert curve.gap_closed(half) == pytest.approx(0.5)  # 100 / (100 + 100)
    assert curve.gap_closed(big) == pytest.approx(0.6)  # 0.8 · 300 / 400
    assert curve.gain(0.7, half) == pytest.approx(0.1)  # (0.9 − 0.7) · 0.5
    assert curve.gain(0.95, half) == 0.0  # above the ceiling: nothing to learn


@given(
    h=st.floats(1, 1e4),
    q=st.floats(0.05, 1.0),
    works=st.lists(st.integers(1, 100_000), min_size=3, max_size=3, unique=True),
)
def test_gain_has_diminishing_returns(h: float, q: float, works: list[int]) -> None:
    curve = AccuracyCurve(0.9, 0.3, 1.0, h)
    low, mid, high = sorted(works)
    f = [curve.gap_closed(RetrainConfig("c", w, q)) for w in (low, mid, high)]
    assert f[0] <= f[1] <= f[2] < q
    first_slope = (f[1] - f[0]) / (mid - low)
    second_slope = (f[2] - f[1]) / (high - mid)
    assert second_slope <= first_slope * (1 + 1e-9)


def test_window_uplift_by_hand() -> None:
    info = WindowInfo("s", 0, start=0, deadline=500, end=600, gain=0.1,
                      decay_per_h=HALF_LIFE_10MIN, config="c", acc_start=0.5)  # fmt: skip
    # G·(e^{−λc} − e^{−λe})/λ with c = 0, e = 600, λ = ln2/600: 0.1 · (1 − 1/2) · 600/ln 2
    assert info.uplift(0) == pytest.approx(30 / math.log(2))
    assert info.uplift(500) > 0
    assert info.uplift(500.1) == 0.0  # past the deadline the model is never deployed
    flat = WindowInfo("s", 0, 0, 600, 600, 0.1, 0.0, "c", 0.5)
    assert flat.uplift(100) == pytest.approx(50.0)  # G · (600 − 100)


def test_speedup_of_fractions_and_whole_gpus() -> None:
    assert speedup(1, 500, 0.9) == 0.5
    assert speedup(1, 1000, 0.9) == 1.0
    assert speedup(4, 1000, 0.9) == pytest.approx(4 * 0.81)
    work = RetrainingWork(100, {"a100": 1.0, "t4": 0.145}, scaling=0.9)
    assert work.rate(AllocationShape("a100", 2, 1), 0) == pytest.approx(1.8)
    assert work.rate(AllocationShape("t4", 1, 1, gpu_milli=500), 0) == pytest.approx(0.0725)
    assert work.rate(AllocationShape("v100", 1, 1), 0) == 0.0  # not in the table


def test_drift_shifts_are_seeded() -> None:
    drift = DriftProfile(shift_prob=0.5, shift_mean=0.1)
    assert (drift.shifts(50, 7) == drift.shifts(50, 7)).all()
    assert (DriftProfile().shifts(20, 1) == 0).all()
    assert (DriftProfile(1.0, 0.1).shifts(20, 1) > 0).all()


def _stream(**overrides: object) -> StreamSpec:
    fields: dict[str, object] = {
        "id": "s",
        "start_s": 0.0,
        "window_s": 600.0,
        "windows": 3,
        "deadline_s": 600.0,
        "task": TaskRequest(1000, 1000, 1, 1000),
        "throughput": {"a100": 1.0},
        "curve": AccuracyCurve(0.9, 0.4, 0.0, 100.0),
        "configs": (RetrainConfig("cheap", 50, 1.0), RetrainConfig("expensive", 400, 1.0)),
    }
    fields.update(overrides)
    return StreamSpec(**fields)  # type: ignore[arg-type]


def test_config_plan_trades_gain_against_deployment_time() -> None:
    stream = _stream(max_gpus=2, scaling=1.0)  # at most 2 reference-GPU-s per second
    alone = [WindowOpening(stream, 0, acc_start=0.5)]
    # cheap: G = 0.4·50/150 = 0.1333; expensive: G = 0.4·400/500 = 0.32 (λ = 0).
    # rate 1: cheap done at 50 → 0.1333·550 = 73.3 beats expensive at 400 → 0.32·200 = 64.
    assert plan_configs(alone, rate=1.0) == [0]
    # rate 2: expensive done at 200 → 128 beats cheap at 25 → 76.7.
    assert plan_configs(alone, rate=2.0) == [1]
    # Nothing finishes in time: the cheapest config.
    assert plan_configs(alone, rate=0.01) == [0]


def test_config_plan_accounts_for_the_delay_it_imposes() -> None:
    stream = _stream(max_gpus=2, scaling=1.0)
    pair = [WindowOpening(stream, 0, 0.5), WindowOpening(replace(stream, id="t"), 0, 0.5)]
    # Sweep 1 from (cheap, cheap): the first job goes expensive (128 − 175 s·0.1333 = 104.7
    # > 76.7), and so does the second (done at 400: 64 > 50). Sweep 2: the first job back
    # to cheap lets the second finish at 225 (0.32·375 = 120): 76.7 + 120 = 196.7 beats
    # 128 + 64 = 192 — the first job's own 128 − 76.7 is less than the 56 it costs the other.
    assert plan_configs(pair, rate=2.0, sweeps=1) == [1, 1]
    assert plan_configs(pair, rate=2.0, sweeps=2) == [0, 1]
    # Equal work per gain: ties go by stream id whatever the order a host lists them in
    # (the controller lists an instant's openings in reconcile order).
    assert plan_configs(pair[::-1], rate=2.0, sweeps=2) == [1, 0]


def test_window_job_carries_its_window() -> None:
    stream = _stream()
    job = stream.window_job(2, config=1, acc_start=0.5)
    info = window_info(job)
    assert info is not None
    assert job.id == "s/w00002" and job.submit_time == 1200.0
    assert (info.start, info.deadline, info.end) == (1200.0, 1800.0, 1800.0)
    assert info.gain == pytest.approx(0.32)
    assert job.work.total == 400


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"deadline_s": 700.0}, "need 0 < deadline_s <= window_s"),
        ({"windows": 0}, "need window_s > 0 and windows >= 1"),
        ({"default_config": 2}, "default_config must index configs"),
        ({"task": TaskRequest(0, 0, 2, 1000)}, r"request one GPU \(or a fraction\)"),
        ({"throughput": {"a100": 0.0}}, "throughput needs a positive entry"),
    ],
)
def test_stream_rejects_inconsistent_specs(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^stream s: {message}"):
        _stream(**bad)
