"""The retraining-window lifecycle both hosts obey: when windows open (every `window_s`
from an anchor, at each firing of a cron schedule, or when a drift trigger fires), their
deadlines, when a window counts as completed or missed, and the deployed model's
accuracy bookkeeping. The simulator (`simulator.continual`) and the controller's
ContinualTrainingJob reconciler (`controller.ctj.plan`) call these; what only a host
knows (simpy time or the wall clock, pod phases, job completions) comes in as arguments.

A window runs from its opening to the next one; its deadline is `deadline_s` after the
opening, capped at the window's end (a cron schedule can fire more often than the
deadline allows). Cron expressions have 5 fields in UTC with Vixie cron's day rule, or 6
with a leading seconds field (as Quartz, Spring and robfig/cron's `WithSeconds` read
them; 5 fields fire at second 0). A cron clock fires on the wall clock: its `epoch` is
the Unix time of the clock's zero (0 for the controller, which counts in Unix seconds;
a recording's origin for the simulator replaying it). The calendar arithmetic is written
out here because `policies/` is pure and may not import `datetime`
(tests/test_architecture.py); tests check it against `datetime`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from policies.continual import AccuracyCurve, DriftTrigger

COMPLETED = "Completed"
MISSED = "Missed"
FINISH_SLACK_S = 1e-9
"""A job finishing this close past its deadline meets it (float rounding)."""

MACROS = MappingProxyType(
    {
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    }
)
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))
_SECONDS = ("second", 0, 59)
_SEARCH_LIMIT = 200_000
"""Steps before a schedule is declared never to fire (e.g. `0 0 30 2 *`)."""
_MAX_COUNTED = 10_000_000
"""Bound on windows counted from an anchor (19 years of a 1-minute schedule, 115 days of
a 1-second one)."""
_MINUTES_PER_DAY = 1440


@dataclass(frozen=True, slots=True)
class Window:
    """Retraining window `index`: opens at `start`, must be retrained by `deadline`,
    closes at `end` (when the next one opens)."""

    index: int
    start: float
    deadline: float
    end: float


class WindowClock(Protocol):
    def current(self, now: float, hint: Window | None = None) -> Window | None:
        """The window open at `now` (None before the first opens). `hint`, an earlier
        window of the same clock, only saves work."""
        ...

    def first_opening(self) -> float: ...

    def openings(self) -> Iterator[Window]:
        """Every window in order, from the first."""
        ...


@dataclass(frozen=True)
class PeriodicWindows:
    anchor: float
    window_s: float
    deadline_s: float

    def current(self, now: float, hint: Window | None = None) -> Window | None:
        if now < self.anchor:
            return None
        return self.window(math.floor((now - self.anchor) / self.window_s))

    def window(self, index: int) -> Window:
        start = self.anchor + index * self.window_s
        end = start + self.window_s
        return Window(index, start, min(start + self.deadline_s, end), end)

    def first_opening(self) -> float:
        return self.anchor

    def openings(self) -> Iterator[Window]:
        index = 0
        while True:
            yield self.window(index)
            index += 1


class CronSchedule:
    """A parsed cron expression; `next_after(t)` is its first firing strictly after `t`
    (Unix seconds; firings fall on whole seconds)."""

    def __init__(self, expression: str) -> None:
        text = MACROS.get(expression.strip(), expression)
        parts = text.split()
        if len(parts) not in (5, 6):
            raise ValueError(
                f"cron schedule {expression!r} needs 5 fields (or 6, seconds first), "
                f"has {len(parts)}"
            )
        seconds = _parse_field(parts.pop(0), *_SECONDS) if len(parts) == 6 else frozenset({0})
        self.seconds = tuple(sorted(seconds))
        fields = zip(parts[:4], _FIELDS, strict=True)
        sets = [_parse_field(part, name, lo, hi) for part, (name, lo, hi) in fields]
        self.minutes, self.hours, self.days, self.months = sets
        # Day of week 0-7 with both 0 and 7 meaning Sunday.
        self.weekdays = frozenset(d % 7 for d in _parse_field(parts[4], "day of week", 0, 7))
        self.any_day = parts[2] == "*"
        self.any_weekday = parts[4] == "*"
        self.expression = expression

    def next_after(self, t: float) -> float:
        minute, second = divmod(math.floor(t) + 1, 60)
        found = self._first_minute_from(minute)
        if found == minute:
            later = bisect.bisect_left(self.seconds, second)
            if later < len(self.seconds):
                return float(minute * 60 + self.seconds[later])
            found = self._first_minute_from(minute + 1)
        return float(found * 60 + self.seconds[0])

    def _first_minute_from(self, minute: int) -> int:
        """The first minute (counted from the epoch) at or after `minute` that matches."""
        for _ in range(_SEARCH_LIMIT):
            day, in_day = divmod(minute, _MINUTES_PER_DAY)
            year, month, date = civil_from_days(day)
            hour, mins = divmod(in_day, 60)
            if month not in self.months:
                minute = _days_from_civil(*_next_month(year, month), 1) * _MINUTES_PER_DAY
            elif not self._day_matches(day, date):
                minute = (day + 1) * _MINUTES_PER_DAY
            elif hour not in self.hours:
                minute = day * _MINUTES_PER_DAY + (hour + 1) * 60
            elif mins not in self.minutes:
                minute += 1
            else:
                return minute
        raise ValueError(f"cron schedule {self.expression!r} never fires")

    def _day_matches(self, day: int, date: int) -> bool:
        by_date = date in self.days
        by_weekday = (day + 4) % 7 in self.weekdays  # 1970-01-01 was a Thursday (4)
        if self.any_day or self.any_weekday:
            return by_date and by_weekday
        return by_date or by_weekday  # both restricted: either matches (Vixie cron)


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the `days`-th day after 1970-01-01 (proleptic Gregorian;
    Howard Hinnant's algorithm)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


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


@dataclass(frozen=True)
class CronWindows:
    """Windows opening at `schedule`'s firings from `anchor` on; times count from the
    clock's zero, which is `epoch` on the Unix clock the schedule fires by."""

    schedule: CronSchedule
    anchor: float
    deadline_s: float
    epoch: float = 0.0

    def first_opening(self) -> float:
        # Firings fall on whole seconds: the first at or after the anchor.
        first = self.schedule.next_after(math.ceil(_unix(self.anchor, self.epoch)) - 1)
        return first - self.epoch

    def _next_after(self, t: float) -> float:
        return self.schedule.next_after(_unix(t, self.epoch)) - self.epoch

    def current(self, now: float, hint: Window | None = None) -> Window | None:
        if hint is not None and hint.start <= now:
            index, start = hint.index, hint.start
        else:
            index, start = 0, self.first_opening()
            if now < start:
                return None
        end = self._next_after(start)
        for _ in range(_MAX_COUNTED):
            if end > now:
                return Window(index, start, min(start + self.deadline_s, end), end)
            index, start, end = index + 1, end, self._next_after(end)
        raise ValueError(f"more than {_MAX_COUNTED} windows of {self.schedule.expression!r}")

    def openings(self) -> Iterator[Window]:
        index, start = 0, self.first_opening()
        while True:
            end = self._next_after(start)
            yield Window(index, start, min(start + self.deadline_s, end), end)
            index, start = index + 1, end


def _unix(t: float, epoch: float) -> float:
    """`t` on the Unix clock, to the microsecond: a firing shifted by a fractional epoch
    and back must not land a rounding error before itself."""
    return round(t + epoch, 6)


def window_clock(
    anchor: float,
    deadline_s: float,
    window_s: float | None = None,
    cron: str | None = None,
    epoch: float = 0.0,
) -> WindowClock:
    """The clock of a schedule: cron firings if `cron` is set (`epoch`: the Unix time of
    the clock's zero), else every `window_s`. Raises ValueError for a schedule that
    cannot work."""
    if cron is not None:
        return CronWindows(CronSchedule(cron), anchor, deadline_s, epoch)
    if window_s is None:
        raise ValueError("a schedule needs a window length or a cron expression")
    return PeriodicWindows(anchor, window_s, deadline_s)


def windows_between(
    clock: WindowClock, after: float, until: float, limit: int | None = None, most: int = 1_000
) -> list[Window]:
    """The windows `clock` opens after `after` and before `until`, as the hosts open
    them (each is `clock.current` at its opening): the one open at `after` is not
    among them, nor any from index `limit` on; at most `most` of them."""
    current = clock.current(after)
    start = current.end if current is not None else clock.first_opening()
    out: list[Window] = []
    while start < until and len(out) < most:
        window = clock.current(start, current)
        if window is None or (limit is not None and window.index >= limit):
            break
        out.append(window)
        current, start = window, window.end
    return out


# -- outcomes ------------------------------------------------------------------------------


def meets_deadline(finished_at: float, deadline: float) -> bool:
    """A retraining finishing exactly at its deadline meets it."""
    return finished_at <= deadline + FINISH_SLACK_S


def settle(deadline: float, now: float, finished_at: float | None, failed: bool) -> str | None:
    """COMPLETED if the retraining finished by the deadline; MISSED if it failed,
    finished late, or is unfinished when the deadline has passed (it is then withdrawn
    and the stale model keeps serving); None while it may still make it."""
    if failed:
        return MISSED
    if finished_at is not None:
        return COMPLETED if meets_deadline(finished_at, deadline) else MISSED
    return MISSED if now >= deadline else None


# -- accuracy bookkeeping ------------------------------------------------------------------


@dataclass
class DeployedModel:
    """The model a stream serves: accuracy `anchor_acc` at `anchor_t`, decaying along
    `curve`; `deployed` is its accuracy right after the last deployment (the drift
    trigger's reference)."""

    curve: AccuracyCurve
    anchor_acc: float
    anchor_t: float
    deployed: float

    @classmethod
    def initial(cls, curve: AccuracyCurve, accuracy: float, at: float) -> DeployedModel:
        return cls(curve, accuracy, at, accuracy)

    def accuracy(self, t: float) -> float:
        return self.curve.decayed(self.anchor_acc, t - self.anchor_t)

    def shift(self, t: float, drop: float) -> None:
        """An abrupt drop at `t`, clamped at the floor."""
        self.anchor_acc = max(self.curve.floor, self.accuracy(t) - drop)
        self.anchor_t = t

    def observe(self, t: float, accuracy: float) -> None:
        """An accuracy measured at `t` replaces the curve's estimate from then on."""
        self.anchor_acc = min(max(accuracy, 0.0), 1.0)
        self.anchor_t = t

    def deploy(
        self, acc: float, data_t: float, now: float, shifts: tuple[tuple[float, float], ...] = ()
    ) -> None:
        """Deploy a model that had `acc` on the data of `data_t` (it ages from then),
        then replay the `shifts` (time, drop) that came after that data."""
        self.anchor_acc, self.anchor_t = acc, data_t
        for at, drop in shifts:
            self.shift(at, drop)
        self.deployed = self.accuracy(now)


def trigger_time(
    trigger: DriftTrigger,
    model: DeployedModel,
    now: float,
    last_trigger: float,
    deadline_s: float,
    end_s: float,
) -> float | None:
    """When the stream's next drift trigger fires: when accuracy reaches the trigger's
    threshold (closed form from the decay), but not within `min_gap_s` of the last
    trigger; None if it would fire too late for its deadline to fall by `end_s`."""
    threshold = trigger.threshold(model.deployed)
    crossing = trigger.crossing_s(model.curve, model.accuracy(now), threshold)
    at = max(now + crossing, last_trigger + trigger.min_gap_s)
    return at if at + deadline_s <= end_s else None


def triggered_window(
    trigger: DriftTrigger,
    model: DeployedModel,
    index: int,
    armed_at: float,
    last_trigger: float,
    window_s: float,
    deadline_s: float,
    end_s: float = math.inf,
) -> Window | None:
    """Drift-triggered window `index`, armed at `armed_at` (when the previous triggered
    retraining ended, or the model last changed): it opens when `trigger_time` fires,
    its deadline `deadline_s` later, and it is valued until `window_s` after the opening
    (or `end_s`). None if staleness alone never fires it."""
    at = trigger_time(trigger, model, armed_at, last_trigger, deadline_s, end_s)
    if at is None or math.isinf(at):
        return None
    return Window(index, at, at + deadline_s, min(at + window_s, end_s))
