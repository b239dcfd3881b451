"""What `kubectl get ctj` prints comes from the status JSON (fast tier): counters are
absent until a window has an outcome, so their columns print blank rather than 0, and
every reader still sees 0. The real server's Table: tests/kube/test_ctj_printing.py."""

from __future__ import annotations

from controller.ctj.crd import CtjStatus, WindowOutcome
from policies.windows import MISSED
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
