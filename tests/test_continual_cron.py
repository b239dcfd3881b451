"""A cron stream in the simulator (`StreamSpec.cron`), worked by hand.

The stream fires at `5,50 59,0 23,0 * * *` (UTC) and its time 0 is 2026-12-31 23:59:00
(`epoch_s`), so its firings cross an hour, a day and a year, unevenly: 23:59:05 (5 s),
23:59:50 (50 s), 00:00:05 (65 s), 00:00:50 (110 s), 00:59:05 (3,605 s), 00:59:50
(3,650 s). Five windows with 30 s deadlines, capped at the next firing:

| window | opens | deadline | ends |
|---|---|---|---|
| 0 | 5 | 35 | 50 |
| 1 | 50 | 65 (capped) | 65 |
| 2 | 65 | 95 | 110 |
| 3 | 110 | 140 | 3,605 |
| 4 | 3,605 | 3,635 | 3,650 |

Each retraining takes 20 s on the one GPU (20 reference-GPU-seconds) and FIFO starts it
at the opening, so it finishes 20 s later: in time except in window 1, whose deadline
the next firing caps at 15 s after its opening.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from policies import Context, Policy, SchedulingResult, Snapshot, make_policy
from policies.continual import (
    AccuracyCurve,
    DriftTrigger,
    RetrainConfig,
    StreamSpec,
    WindowOpening,
)
from policies.windows import CronSchedule
from simulator.continual import ContinualRun
from tests.test_continual_run import COL, NODE, stream

EXPRESSION = "5,50 59,0 23,0 * * *"
ORIGIN = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()
OPENS = [5.0, 50.0, 65.0, 110.0, 3605.0]
DEADLINES = [35.0, 65.0, 95.0, 140.0, 3635.0]
ENDS = [50.0, 65.0, 110.0, 3605.0, 3650.0]


def cron_stream(**overrides: object) -> StreamSpec:
    fields: dict[str, object] = {
        "window_s": 0.0,
        "windows": 5,
        "deadline_s": 30.0,
        "curve": AccuracyCurve(ceiling=0.9, floor=0.5, decay_per_h=36.0, half_gain_gpu_s=20),
        "configs": (RetrainConfig("only", work_gpu_s=20, quality=1.0),),
        "initial_accuracy": 0.6,
        "cron": EXPRESSION,
        "epoch_s": ORIGIN,
    }
    return stream(**{**fields, **overrides})


class Valuing(Policy):
    """FIFO that records, per opening, the window span and deadline it is valued by."""

    def __init__(self) -> None:
        super().__init__()
        self.fifo = make_policy("fifo")
        self.valued: list[tuple[int, float, float, float]] = []

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        return self.fifo.schedule(snapshot, ctx)

    def plan_windows(self, openings: Sequence[WindowOpening], snapshot: Snapshot) -> list[int]:
        for o in openings:
            spec = o.stream
            self.valued.append((o.index, spec.start_s, spec.deadline_s, spec.window_s))
        return [0 for _ in openings]


def test_cron_windows_open_at_the_firings_policies_windows_computes() -> None:
    policy = Valuing()
    run = ContinualRun([NODE], [cron_stream()], policy)
    run.run()
    rows = sorted(run.rows, key=lambda r: int(r[COL["window"]]))  # type: ignore[call-overload]
    assert [r[COL["start_s"]] for r in rows] == OPENS
    assert [r[COL["deadline_s"]] for r in rows] == DEADLINES
    # The same instants, from the one lifecycle's parser on the Unix clock.
    schedule, after, fired = CronSchedule(EXPRESSION), ORIGIN - 1, []
    for _ in range(5):
        after = schedule.next_after(after)
        fired.append(after - ORIGIN)
    assert fired == OPENS


def test_a_capped_deadline_misses_and_the_rest_complete() -> None:
    run = ContinualRun([NODE], [cron_stream()], Valuing())
    run.run()
    rows = sorted(run.rows, key=lambda r: int(r[COL["window"]]))  # type: ignore[call-overload]
    status = [r[COL["status"]] for r in rows]
    assert status == ["completed", "expired", "completed", "completed", "completed"]
    finished = [r[COL["end_s"]] for r in rows if r[COL["status"]] == "completed"]
    assert finished == [25.0, 85.0, 130.0, 3625.0]


def test_each_cron_window_is_valued_over_its_own_length() -> None:
    """The allocators see each window as the controller shows it: its own span to the
    next firing and its (capped) deadline."""
    policy = Valuing()
    ContinualRun([NODE], [cron_stream()], policy).run()
    spans = [e - o for o, e in zip(OPENS, ENDS, strict=True)]
    deadlines = [d - o for o, d in zip(OPENS, DEADLINES, strict=True)]
    assert policy.valued == list(zip(range(5), OPENS, deadlines, spans, strict=True))


def test_the_model_is_tracked_from_the_first_firing() -> None:
    """Anchored 2 s before the first firing, the stream's model still starts there (as
    the controller tracks a CTJ's from its first opening): window 0 opens at the
    initial accuracy."""
    run = ContinualRun([NODE], [cron_stream(start_s=3.0)], Valuing())
    run.run()
    first = min(run.rows, key=lambda r: int(r[COL["window"]]))  # type: ignore[call-overload]
    assert (first[COL["start_s"]], first[COL["acc_start"]]) == (5.0, 0.6)


def test_stream_end_and_window_starts_follow_the_firings() -> None:
    stream = cron_stream()
    assert [stream.window_start(i) for i in range(5)] == OPENS
    assert stream.end_s == 3650.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"window_s": 10.0}, "a cron stream's windows open at its firings"),
        ({"trigger": DriftTrigger(below=0.7)}, "a cron stream's windows open at its firings"),
        ({"cron": "61 * * * * *"}, "cron second field '61': values must lie in 0-59"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"deadline_s": 0.0}, "need windows >= 1 and deadline_s > 0"),
    ],
)
def test_a_bad_cron_stream_is_refused_naming_why(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^stream s: .*{message}"):
        cron_stream(**bad)
