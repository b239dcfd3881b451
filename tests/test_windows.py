"""The window lifecycle's clocks (`policies.windows`): periodic arithmetic and cron
firings, checked against dates worked out by hand on a calendar (all UTC), and its
calendar arithmetic against `datetime`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.ctj.crd import RetrainSchedule
from controller.ctj.plan import ctj_clock
from policies.windows import (
    CronSchedule,
    CronWindows,
    PeriodicWindows,
    Window,
    civil_from_days,
    settle,
)


def at(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def firings(expression: str, after: float, count: int) -> list[datetime]:
    schedule, out = CronSchedule(expression), []
    for _ in range(count):
        after = schedule.next_after(after)
        out.append(datetime.fromtimestamp(after, UTC))
    return out


def test_periodic_window_index_start_deadline_and_end() -> None:
    clock = PeriodicWindows(anchor=1000.0, window_s=600, deadline_s=480)
    assert clock.current(999.0) is None
    assert clock.current(1000.0) == Window(0, 1000.0, 1480.0, 1600.0)
    assert clock.current(2799.0) == Window(2, 2200.0, 2680.0, 2800.0)
    assert clock.current(2800.0) == Window(3, 2800.0, 3280.0, 3400.0)


def test_cron_steps_ranges_and_lists() -> None:
    # Saturday 2026-11-28 noon: the next weekday business-hours quarter is Monday 09:00.
    got = firings("*/15 9-17 * * 1-5", at(2026, 11, 28, 12), 3)
    assert got == [
        datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 9, 15, tzinfo=UTC),
        datetime(2026, 11, 30, 9, 30, tzinfo=UTC),
    ]
    assert firings("5,35 0 * * *", at(2026, 1, 1, 0, 5), 2) == [
        datetime(2026, 1, 1, 0, 35, tzinfo=UTC),
        datetime(2026, 1, 2, 0, 5, tzinfo=UTC),
    ]


def test_cron_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # "the 13th, and every Friday" (Vixie cron): Jan 2026 Fridays are 2, 9, 16.
    got = [d.day for d in firings("0 0 13 * 5", at(2026, 1, 1), 4)]
    assert got == [2, 9, 13, 16]


def test_cron_sunday_is_0_or_7_and_month_rollover() -> None:
    # 2026-12-27 is a Sunday; the next is 2027-01-03.
    assert firings("30 6 * * 7", at(2026, 12, 27, 7), 1) == [
        datetime(2027, 1, 3, 6, 30, tzinfo=UTC)
    ]
    assert firings("@monthly", at(2026, 12, 15), 1) == [datetime(2027, 1, 1, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "needs 5 fields"),
        ("61 * * * *", "values must lie in 0-59"),
        ("* * * 1-13 *", "values must lie in 1-12"),
        ("*/0 * * * *", "values must lie"),
        ("a * * * *", "not a number"),
    ],
)
def test_bad_cron_fields_are_named(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CronSchedule(expression)


def test_cron_that_never_fires_is_an_error() -> None:
    with pytest.raises(ValueError, match="never fires"):
        CronSchedule("0 0 30 2 *").next_after(at(2026, 1, 1))


def test_cron_windows_count_firings_and_cap_the_deadline_at_the_next_firing() -> None:
    anchor = at(2026, 3, 1, 10, 0)  # a firing itself: window 0 opens at the anchor
    clock = CronWindows(CronSchedule("0 */2 * * *"), anchor, deadline_s=3 * 3600)
    assert clock.current(anchor - 1) is None
    window = clock.current(at(2026, 3, 1, 15, 30))
    assert window == Window(2, at(2026, 3, 1, 14), at(2026, 3, 1, 16), at(2026, 3, 1, 16))
    # Counting on from an earlier window gives the same answer.
    hint = clock.current(at(2026, 3, 1, 10, 1))
    assert clock.current(at(2026, 3, 1, 15, 30), hint) == window


def test_window_clock_anchors_at_start_time_or_creation() -> None:
    periodic = RetrainSchedule(deadline_s=5, window_s=10)
    assert ctj_clock(periodic, created=100.0).first_opening() == 100.0
    started = RetrainSchedule(deadline_s=5, window_s=10, start_time=250.0)
    assert ctj_clock(started, created=100.0).first_opening() == 250.0
    cron = RetrainSchedule(deadline_s=60, cron="@hourly")
    assert ctj_clock(cron, created=at(2026, 1, 1, 0, 0, 30)).first_opening() == at(2026, 1, 1, 1)


@given(st.integers(min_value=-700_000, max_value=2_900_000))
def test_calendar_arithmetic_agrees_with_datetime(days: int) -> None:
    moment = datetime.fromtimestamp(days * 86_400, UTC)
    assert civil_from_days(days) == (moment.year, moment.month, moment.day)


@given(
    st.integers(min_value=0, max_value=4_000_000_000),
    st.sampled_from(["0 0 29 2 *", "*/7 3 * * 2", "15 10 1,15 * *", "0 12 * 6-8 0"]),
)
def test_cron_next_after_is_the_first_matching_minute(t: int, expression: str) -> None:
    schedule = CronSchedule(expression)
    fired = datetime.fromtimestamp(schedule.next_after(t), UTC)
    assert fired.timestamp() > t and fired.second == 0
    weekday = (fired.weekday() + 1) % 7  # cron counts Sunday as 0
    assert fired.minute in schedule.minutes and fired.hour in schedule.hours
    assert fired.month in schedule.months
    assert fired.day in schedule.days or weekday in schedule.weekdays


def test_periodic_openings_enumerate_the_windows_current_finds() -> None:
    clock = PeriodicWindows(anchor=50.0, window_s=30, deadline_s=20)
    openings = clock.openings()
    for window in (next(openings) for _ in range(5)):
        assert clock.current(window.start) == window


def test_cron_openings_enumerate_the_windows_current_finds() -> None:
    clock = CronWindows(CronSchedule("*/20 * * * *"), at(2026, 3, 1, 10, 5), deadline_s=600)
    openings = clock.openings()
    got = [next(openings) for _ in range(4)]
    assert [w.start for w in got] == [at(2026, 3, 1, 10, m) for m in (20, 40)] + [
        at(2026, 3, 1, 11, 0),
        at(2026, 3, 1, 11, 20),
    ]
    assert all(clock.current(w.start + 1) == w for w in got)
    assert got[0].deadline == got[0].start + 600


def test_settle_completed_missed_or_open() -> None:
    assert settle(deadline=100.0, now=50.0, finished_at=None, failed=False) is None
    assert settle(deadline=100.0, now=100.0, finished_at=None, failed=False) == "Missed"
    assert settle(deadline=100.0, now=120.0, finished_at=100.0, failed=False) == "Completed"
    assert settle(deadline=100.0, now=120.0, finished_at=100.5, failed=False) == "Missed"
    assert settle(deadline=100.0, now=50.0, finished_at=None, failed=True) == "Missed"
