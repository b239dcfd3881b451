"""A recorded run's CTJs as the simulator's streams (`controller.ctj.streams`)."""

from __future__ import annotations

import pytest

from controller.ctj.continual import ctj_clock, stream_of
from controller.ctj.crd import ctj_from_json
from controller.ctj.streams import recorded_stream
from controller.scheduling.effects import now_rfc3339
from policies import NodeSpec, make_policy
from policies.windows import Window
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.test_ctj_inference import agreement_ctj

CREATED = 1_700_000_040.0


def test_a_ctj_replays_as_the_stream_the_controller_values_it_as() -> None:
    body = agreement_ctj("late", (1.2, 2.5), 5.0)
    body["spec"]["retrain"]["windows"] = 3
    ctj = ctj_from_json(body)
    stream = recorded_stream(ctj, CREATED)
    start = ctj.spec.retrain.start_time
    assert start is not None
    valued = stream_of(ctj, Window(0, start, start + 8, start + 10))
    assert (stream.id, stream.windows, stream.trigger) == ("ns/late", 3, None)
    assert stream.start_s == start - CREATED
    assert stream.allowed_models == frozenset({"A100"})
    for name in ("window_s", "deadline_s", "task", "curve", "configs", "max_gpus", "scaling"):
        assert getattr(stream, name) == getattr(valued, name), name
    assert stream.restart_cost_s == valued.restart_cost_s
    assert dict(stream.throughput) == dict(valued.throughput)


def test_a_cron_ctj_replays_with_the_firings_the_reconciler_opens_windows_at() -> None:
    """CREATED is 22:14:00 UTC; from 0.1 s on, `3,9,17,21,...` fires 3, 9, 17 and 21 s
    after it. The stream counts from an origin 0.1 s later, so its windows open 0.1 s
    earlier on its clock, at the same Unix instants as the controller's clock."""
    assert CREATED % 60 == 0
    body = agreement_ctj("tick", (1.2,), 0.1)
    retrain = body["spec"]["retrain"]
    del retrain["windowSeconds"]
    retrain.update(schedule="3,9,17,21,33,41,47,53 * * * * *", deadlineSeconds=6, windows=4)
    ctj = ctj_from_json(body)
    origin = CREATED + 0.1
    stream = recorded_stream(ctj, origin)
    live = ctj_clock(ctj.spec.retrain, ctj.created).openings()
    live_windows = [next(live) for _ in range(4)]
    assert [w.start - CREATED for w in live_windows] == [3, 9, 17, 21]
    replayed = stream.clock().openings()
    for window in live_windows:
        shifted = next(replayed)
        assert shifted.index == window.index
        assert shifted.start + origin == pytest.approx(window.start, abs=1e-6)
        assert shifted.deadline + origin == pytest.approx(window.deadline, abs=1e-6)
        assert shifted.end + origin == pytest.approx(window.end, abs=1e-6)
    run = ContinualRun([NodeSpec("a", 32_000, 131_072, 4, "A100")], [stream], make_policy("edf"))
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    opened = sorted(float(r[col["start_s"]]) for r in run.rows)  # type: ignore[arg-type]
    assert opened == pytest.approx([2.9, 8.9, 16.9, 20.9])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"windows": None}, "spec.retrain.windows"),
        ({"configs": None}, "spec.retrain.configs"),
        ({"windows": "three"}, "not a valid CTJ, so not replayed: spec.retrain.windows"),
    ],
)
def test_a_ctj_the_simulator_cannot_replay_is_named_with_its_field(
    change: dict[str, object], field: str
) -> None:
    body = agreement_ctj("late", (1.2,), 0.0)
    retrain = body["spec"]["retrain"]
    retrain["startTime"] = now_rfc3339(CREATED)
    for key, value in change.items():
        if value is None:
            retrain.pop(key, None)
        else:
            retrain[key] = value
    with pytest.raises(ValueError, match=field):
        recorded_stream(ctj_from_json(body), CREATED)
