"""A recorded run's CTJs as the simulator's streams (`controller.ctj.streams`)."""

from __future__ import annotations

import pytest

from controller.ctj.continual import stream_of
from controller.ctj.crd import ctj_from_json
from controller.ctj.streams import recorded_stream
from controller.scheduling.effects import now_rfc3339
from policies.windows import Window
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


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schedule": "*/5 * * * *", "windowSeconds": None}, "spec.retrain.schedule"),
        ({"windows": None}, "spec.retrain.windows"),
        ({"configs": None}, "spec.retrain.configs"),
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
