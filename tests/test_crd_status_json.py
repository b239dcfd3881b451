"""What `kubectl get ctj` prints comes from the status JSON (fast tier): counters are
absent until a window has an outcome, so their columns print blank rather than 0, and
every reader still sees 0. The real server's Table: tests/kube/test_ctj_printing.py."""

from __future__ import annotations

from controller.ctj.crd import CtjStatus, WindowOutcome
from policies.windows import MISSED, Window
from tests.test_crd_schema import crd, schema, validate


def test_counters_are_absent_until_a_window_has_an_outcome() -> None:
    fresh = CtjStatus().to_json()
    assert not {"windowsRecorded", "completedWindows", "missedDeadlines"} & set(fresh)
    validate(fresh, schema()["properties"]["status"])
    assert CtjStatus.from_json(fresh) == CtjStatus()


def test_a_recorded_window_shows_every_counter_even_a_zero() -> None:
    missed = CtjStatus(
        windows_recorded=1,
        missed_deadlines=1,
        history=(WindowOutcome(0, MISSED, "Unschedulable"),),
    )
    shown = missed.to_json()
    assert (shown["windowsRecorded"], shown["completedWindows"], shown["missedDeadlines"]) == (
        1,
        0,
        1,
    )
    assert CtjStatus.from_json(shown) == missed


def test_no_printer_column_is_a_date_that_can_lie_in_the_future() -> None:
    """The server prints a `date` column as the time since: `<invalid>` for a future time."""
    (version,) = crd()["spec"]["versions"]
    dates = {c["jsonPath"] for c in version["additionalPrinterColumns"] if c["type"] == "date"}
    assert dates == {".status.lastRetrainTime", ".metadata.creationTimestamp"}


def test_window_times_print_whole_seconds_and_keep_fractions() -> None:
    """The Deadline column shows `...:21Z` for a window on whole seconds (every timed
    window: creation times are whole seconds), not `...:21.000000Z`; a drift-triggered
    window's fraction of a second is kept, and both read back exactly."""
    whole = Window(0, 1_796_584_641.0, 1_796_585_121.0, 1_796_585_241.0)
    drift = Window(3, 1_796_584_641.25, 1_796_584_650.5, 1_796_584_660.000001)
    status = CtjStatus(current_window=whole).to_json()["currentWindow"]
    assert status == {
        "index": 0,
        "start": "2026-12-06T19:17:21Z",
        "deadline": "2026-12-06T19:25:21Z",
        "end": "2026-12-06T19:27:21Z",
    }
    validate(status, schema()["properties"]["status"]["properties"]["currentWindow"])
    shown = CtjStatus(current_window=drift).to_json()["currentWindow"]
    assert shown["start"] == "2026-12-06T19:17:21.250000Z"
    assert shown["end"] == "2026-12-06T19:17:40.000001Z"
    for window in (whole, drift):
        back = CtjStatus.from_json(CtjStatus(current_window=window).to_json()).current_window
        assert back == window
