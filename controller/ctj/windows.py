"""When a ContinualTrainingJob's retraining windows open: every `windowSeconds` from
an anchor, or at each firing of a cron schedule (5 fields, UTC, Vixie-cron day rule).

A window runs from its opening to the next one; its deadline is `deadlineSeconds`
after the opening, capped at the window's end (a cron schedule can fire more often than
the deadline allows; a periodic window is validated by the CRD instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from controller.ctj.crd import RetrainSchedule, Window

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))
_SEARCH_LIMIT = 200_000
"""Steps before a schedule is declared never to fire (e.g. `0 0 30 2 *`)."""
_MAX_COUNTED = 10_000_000
"""Bound on windows counted from an anchor (a 1-minute schedule gives 19 years)."""


class WindowClock(Protocol):
    def current(self, now: float, hint: Window | None = None) -> Window | None:
        """The window open at `now` (None before the first opens). `hint`, an earlier
        window of the same clock, only saves work."""
        ...

    def first_opening(self) -> float: ...


@dataclass(frozen=True)
class PeriodicWindows:
    anchor: float
    window_s: float
    deadline_s: float

    def current(self, now: float, hint: Window | None = None) -> Window | None:
        if now < self.anchor:
            return None
        index = math.floor((now - self.anchor) / self.window_s)
        start = self.anchor + index * self.window_s
        end = start + self.window_s
        return Window(index, start, min(start + self.deadline_s, end), end)

    def first_opening(self) -> float:
        return self.anchor


class CronSchedule:
    """A parsed cron expression; `next_after(t)` is its first firing strictly after `t`."""

    def __init__(self, expression: str) -> None:
        text = MACROS.get(expression.strip(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"cron schedule {expression!r} needs 5 fields, has {len(parts)}")
        fields = zip(parts[:4], _FIELDS, strict=True)
        sets = [_parse_field(part, name, lo, hi) for part, (name, lo, hi) in fields]
        self.minutes, self.hours, self.days, self.months = sets
        # Day of week 0-7 with both 0 and 7 meaning Sunday; Python counts Monday as 0.
        weekdays = _parse_field(parts[4], "day of week", 0, 7)
        self.weekdays = {(d - 1) % 7 for d in weekdays}
        self.any_day = parts[2] == "*"
        self.any_weekday = parts[4] == "*"
        self.expression = expression

    def next_after(self, t: float) -> float:
        moment = datetime.fromtimestamp((math.floor(t / 60) + 1) * 60, UTC)
        for _ in range(_SEARCH_LIMIT):
            if moment.month not in self.months:
                moment = _first_of_next_month(moment)
            elif not self._day_matches(moment):
                moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
            elif moment.hour not in self.hours:
                moment = moment.replace(minute=0) + timedelta(hours=1)
            elif moment.minute not in self.minutes:
                moment += timedelta(minutes=1)
            else:
                return moment.timestamp()
        raise ValueError(f"cron schedule {self.expression!r} never fires")

    def _day_matches(self, moment: datetime) -> bool:
        by_date = moment.day in self.days
        by_weekday = moment.weekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return by_date and by_weekday
        return by_date or by_weekday  # both restricted: either matches (Vixie cron)


def _parse_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                first, last = lo, hi
            elif "-" in span:
                first, last = (int(v) for v in span.split("-", 1))
            else:
                first = int(span)
                last = hi if step_text else first
        except ValueError:
            raise ValueError(f"cron {name} field {text!r}: not a number, range or step") from None
        if step < 1 or not lo <= first <= last <= hi:
            raise ValueError(f"cron {name} field {text!r}: values must lie in {lo}-{hi}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _first_of_next_month(moment: datetime) -> datetime:
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CronWindows:
    schedule: CronSchedule
    anchor: float
    deadline_s: float

    def first_opening(self) -> float:
        # Firings fall on whole minutes: one exactly at the anchor counts.
        return self.schedule.next_after(self.anchor - 1e-3)

    def current(self, now: float, hint: Window | None = None) -> Window | None:
        if hint is not None and hint.start <= now:
            index, start = hint.index, hint.start
        else:
            index, start = 0, self.first_opening()
            if now < start:
                return None
        end = self.schedule.next_after(start)
        for _ in range(_MAX_COUNTED):
            if end > now:
                return Window(index, start, min(start + self.deadline_s, end), end)
            index, start, end = index + 1, end, self.schedule.next_after(end)
        raise ValueError(f"more than {_MAX_COUNTED} windows of {self.schedule.expression!r}")


def window_clock(retrain: RetrainSchedule, created: float) -> WindowClock:
    """The clock of a spec; raises ValueError for a schedule that cannot work."""
    anchor = retrain.start_time if retrain.start_time is not None else created
    if retrain.cron is not None:
        return CronWindows(CronSchedule(retrain.cron), anchor, retrain.deadline_s)
    if retrain.window_s is None:
        raise ValueError("retrain needs windowSeconds or schedule")
    return PeriodicWindows(anchor, retrain.window_s, retrain.deadline_s)
