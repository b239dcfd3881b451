"""A replay decides at the instants the controller decided at: the controller's rounds
fall on the Unix clock's multiples of the round length, so the simulator's rounds do too
when it knows the Unix time of its zero (`EngineOptions.epoch_s`, or the streams'
`epoch_s`: a recorded run's origin).

Before, the simulator's rounds fell on multiples from its zero. A recording whose zero
was an odd second (half of the CTJ agreement runs) was replayed with every round 1 s
after the controller's, and `thief`, which values a share by when it would complete,
parted near-equal windows the other way (issue 18).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import NodeSpec, TaskRequest, make_policy
from policies.continual import AccuracyCurve, RetrainConfig, StreamSpec, uplift
from simulator.continual import STREAM_COLUMNS, ContinualRun
from simulator.engine import EngineOptions, Simulation
from tests.conftest import job, job_rows, node

ROUND_S = 2.0
ODD = 1_796_000_001.0
"""A Unix second off the controller's grid of 2 s rounds."""


def first_start(epoch_s: float, submit: float) -> float:
    """When a job submitted at `submit` starts on an idle node under a round policy: at
    the first round from then on (thief places ordinary jobs first-fit at its rounds)."""
    policy = make_policy("thief", {"realloc_s": ROUND_S})
    jobs = [job("a", submit=submit, duration=5.0)]
    options = EngineOptions(epoch_s=epoch_s)
    rows = job_rows(Simulation([node("n0", 1)], jobs, policy, options).run())
    return float(rows["a"]["start_s"])


def test_rounds_fall_on_the_unix_clocks_multiples_of_the_round_length() -> None:
    assert first_start(0.0, 0.5) == 2.0
    assert first_start(ODD, 0.5) == 1.0
    assert first_start(ODD + 1, 0.5) == 2.0
    assert first_start(ODD, 1.5) == 3.0


@given(st.floats(0, 2e9, allow_nan=False), st.floats(0.01, 10.0))
def test_every_round_is_on_the_controllers_grid(epoch_s: float, submit: float) -> None:
    start = first_start(epoch_s, submit)
    assert submit <= start <= submit + ROUND_S
    instant = (epoch_s + start) / ROUND_S
    assert instant == pytest.approx(round(instant), abs=1e-6)


# The contended pair of the CTJ agreement test: 3 windows open together 0.1 s after an
# odd Unix second on 2 A100s, each config 4.45 GPU-seconds (4.45 s on one GPU). a-mid
# gains most and takes one GPU; the other goes to a-fast or a-low. At window 1 a-fast
# stands at 0.6411 (decaying 108 %/h) and a-low at 0.6696 (54 %/h), so
# G = (0.9 - a)·4.45/6.45 is 0.1786 and 0.1590; completing s seconds after the opening
# earns G·(exp(-λs) - exp(-10λ))/λ. On the controller's grid the round comes 0.9 s
# after the opening (s = 5.35): a-fast 0.6603 > a-low 0.6589; a round 1 s later
# (s = 6.35) values a-fast 0.5105 < a-low 0.5133: a-fast loses more by the wait.
THOROUGH = RetrainConfig("thorough", 4.45, 1.0)
BRIEF = RetrainConfig("brief", 4.15, 0.6)
DESIGNS = {"a-mid": (0.6, 72.0), "a-fast": (0.45, 108.0), "a-low": (0.35, 54.0)}


def stream(name: str, zero: float) -> StreamSpec:
    initial, decay_per_h = DESIGNS[name]
    return StreamSpec(
        id=name,
        start_s=ODD + 0.1 - zero,
        window_s=10.0,
        windows=2,
        deadline_s=7.0,
        task=TaskRequest(1000, 1024, 1, 1000),
        throughput={"A100": 1.0},
        curve=AccuracyCurve(0.9, 0.3, decay_per_h, 2.0),
        configs=(BRIEF, THOROUGH),
        initial_accuracy=initial,
        max_gpus=2,
        allowed_models=frozenset({"A100"}),
        epoch_s=zero,
    )


def replay(zero: float) -> dict[tuple[str, int], tuple[object, ...]]:
    """(status, config, replicas, accuracy at the opening) per window."""
    streams = [stream(name, zero) for name in DESIGNS]
    nodes = [NodeSpec("a100-0", 32_000, 131_072, 2, "A100")]
    run = ContinualRun(nodes, streams, make_policy("thief", {"realloc_s": ROUND_S}))
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    out: dict[tuple[str, int], tuple[object, ...]] = {}
    for row in run.rows:
        status, config, replicas, window, acc = (
            row[col[name]] for name in ("status", "config", "replicas", "window", "acc_start")
        )
        assert isinstance(window, int) and isinstance(acc, float), (window, acc)
        out[(str(row[col["stream_id"]]), window)] = (status, config, replicas, round(acc, 4))
    return out


def test_the_hand_worked_values_of_the_contended_pair() -> None:
    def value(name: str, acc: float, since: float) -> float:
        curve = AccuracyCurve(0.9, 0.3, DESIGNS[name][1], 2.0)
        return float(uplift(curve.gain(acc, THOROUGH), curve.decay_per_s, since, 10.0))

    on_grid = (value("a-fast", 0.6411, 5.35), value("a-low", 0.6696, 5.35))
    late = (value("a-fast", 0.6411, 6.35), value("a-low", 0.6696, 6.35))
    assert on_grid == pytest.approx((0.6603, 0.6589), abs=1e-4)
    assert late == pytest.approx((0.5105, 0.5133), abs=1e-4)


def test_thief_replayed_from_an_odd_zero_decides_as_on_the_controllers_grid() -> None:
    """The zero off the grid (an odd second) and one on it (the second before) replay the
    same run: rounds at the same Unix instants, the same verdicts."""
    off_grid, on_grid = replay(ODD), replay(ODD - 1)
    assert off_grid == on_grid
    assert off_grid[("a-fast", 1)] == ("completed", "thorough", 1, 0.6411)
    assert off_grid[("a-low", 1)] == ("expired", "thorough", 0, 0.6696)
    assert off_grid[("a-mid", 1)][:3] == ("completed", "thorough", 1)


def test_a_run_has_one_clock() -> None:
    streams = [stream("a-fast", ODD), replace(stream("a-low", ODD), epoch_s=ODD - 1)]
    nodes = [NodeSpec("a100-0", 32_000, 131_072, 2, "A100")]
    with pytest.raises(ValueError, match=r"streams' epoch_s differ .*one clock"):
        ContinualRun(nodes, streams, make_policy("thief"))
