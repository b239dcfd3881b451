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


def test_a_leading_seconds_field_takes_lists_ranges_and_steps() -> None:
    # A list, across a minute: after 12:00:09 come :17, then 12:01:03 and :09.
    assert firings("3,9,17 * * * * *", at(2026, 5, 4, 12, 0, 9), 3) == [
        datetime(2026, 5, 4, 12, 0, 17, tzinfo=UTC),
        datetime(2026, 5, 4, 12, 1, 3, tzinfo=UTC),
        datetime(2026, 5, 4, 12, 1, 9, tzinfo=UTC),
    ]
    # A stepped range in minute 30 of each hour: 15 and 20, then 10 an hour later.
    assert firings("10-20/5 30 * * * *", at(2026, 5, 4, 9, 30, 12), 3) == [
        datetime(2026, 5, 4, 9, 30, 15, tzinfo=UTC),
        datetime(2026, 5, 4, 9, 30, 20, tzinfo=UTC),
        datetime(2026, 5, 4, 10, 30, 10, tzinfo=UTC),
    ]
    # A step from a start value, across midnight and a year: 40, 50, then 00:00:40.
    assert firings("40/10 59,0 23,0 * * *", at(2026, 12, 31, 23, 59, 30), 4) == [
        datetime(2026, 12, 31, 23, 59, 40, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 50, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 40, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 50, tzinfo=UTC),
    ]


def test_five_fields_keep_their_meaning_firing_at_second_zero() -> None:
    after = at(2026, 5, 4, 12, 5, 0)  # a firing itself: the next is an hour on
    assert firings("5 * * * *", after, 2) == firings("0 5 * * * *", after, 2)
    assert firings("5 * * * *", after - 0.5, 1) == [datetime(2026, 5, 4, 12, 5, tzinfo=UTC)]
    assert firings("@hourly", after, 1) == [datetime(2026, 5, 4, 13, 0, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("60 * * * * *", "cron second field '60': values must lie in 0-59"),
        ("3,9,61 * * * * *", "cron second field '3,9,61': values must lie in 0-59"),
        ("40-20 * * * * *", "cron second field '40-20': values must lie in 0-59"),
        ("*/0 * * * * *", "cron second field '\\*/0': values must lie"),
        ("1s * * * * *", "cron second field '1s': not a number"),
        ("0 61 * * * *", "cron minute field '61'"),
        ("* * * * * * *", "needs 5 fields \\(or 6, seconds first\\), has 7"),
    ],
)
def test_bad_seconds_fields_are_named(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CronSchedule(expression)


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


@given(
    st.integers(min_value=0, max_value=4_000_000_000),
    st.sampled_from(["3,9,17,21,33,41,47,53 * * * * *", "*/13 */7 * * * *", "0-5,50 0 */3 * * *"]),
)
def test_cron_next_after_with_seconds_is_the_first_matching_second(t: int, expression: str) -> None:
    schedule = CronSchedule(expression)
    fired = schedule.next_after(t)
    moment = datetime.fromtimestamp(fired, UTC)
    assert fired > t and fired == int(fired)
    assert moment.second in schedule.seconds and moment.minute in schedule.minutes
    assert moment.hour in schedule.hours
    # No matching second in between, counted second by second.
    for between in range(t + 1, int(fired)):
        m = datetime.fromtimestamp(between, UTC)
        matching = m.second in schedule.seconds and m.minute in schedule.minutes
        assert not (matching and m.hour in schedule.hours), m


def test_a_cron_clock_with_an_epoch_fires_by_the_wall_clock() -> None:
    """A clock counting from a recording's origin opens its windows at the Unix
    clock's firings, shifted to the origin: here 12:00:00.5, so the first firing at or
    after the anchor (12:00:04.5) is 12:00:09, 8.5 s after the origin."""
    origin = at(2026, 5, 4, 12) + 0.5
    clock = CronWindows(CronSchedule("3,9,17 * * * * *"), 4.0, deadline_s=6, epoch=origin)
    openings = clock.openings()
    got = [next(openings) for _ in range(3)]
    assert got == [
        Window(0, 8.5, 14.5, 16.5),
        Window(1, 16.5, 22.5, 62.5),
        Window(2, 62.5, 68.5, 68.5),
    ]
    assert clock.current(16.5) == got[1] and clock.current(16.4) == got[0]
    absolute = CronWindows(CronSchedule("3,9,17 * * * * *"), origin + 4.0, deadline_s=6)
    assert absolute.first_opening() == origin + 8.5


def test_a_cron_firing_at_the_anchor_opens_window_0() -> None:
    anchor = at(2026, 5, 4, 12, 0, 9)
    clock = CronWindows(CronSchedule("3,9,17 * * * * *"), anchor, deadline_s=6)
    assert clock.first_opening() == anchor
    assert CronWindows(CronSchedule("3,9,17 * * * * *"), anchor + 1e-4, 6).first_opening() == (
        anchor + 8
    )


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
