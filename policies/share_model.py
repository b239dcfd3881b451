"""What a continual-training job's GPU share is worth: the value model the share
allocators (`policies.accuracy_aware`) plan with.

A retraining job may get a share from `LEVELS_MILLI` (a quarter or half of one GPU by
time-slicing, or 1–8 whole GPUs on one node), from its elastic minimum to its maximum,
on any GPU model it allows; a quarter or a half only where GPUs can be shared
(`NodeSpec.shares_gpus`). An option
(model, share) is worth the window uplift of `policies.continual` at the completion
time it implies (zero past the deadline); a move pays the job's restart delay. A pass
tabulates every option of every job (`SharePlan`) beside the capacity retraining may
use (`ShareRoom`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from policies.cluster import MILLI, ClusterState, read_only
from policies.continual import RETRAIN_KIND, WHOLE_SHARES, WindowInfo, window_info
from policies.jobs import JobSpec, JobStatus, JobView, Placement

LEVELS_MILLI = read_only(np.array([250, 500, *(n * MILLI for n in WHOLE_SHARES)], dtype=np.int64))
_LEVEL_INDEX = MappingProxyType({int(level): i for i, level in enumerate(LEVELS_MILLI)})
_LEVELS = tuple(int(x) for x in LEVELS_MILLI)
WHOLE_LEVEL = _LEVELS.index(MILLI)
"""Index of one whole GPU in `LEVELS_MILLI`; the levels below it share a GPU."""
_TASKS = tuple(max(1, x // MILLI) for x in _LEVELS)
"""Tasks (one per whole GPU, one for a fraction) a share of each level places."""
_MANY = 1 << 20
_DEADLINE_SLACK_S = 1e-6
"""A finish this close past the deadline still meets it (float rounding)."""


@dataclass(frozen=True, slots=True)
class JobFacts:
    """Per-job facts that do not change while the job lives."""

    info: WindowInfo
    speed: np.ndarray
    level_speed: np.ndarray
    max_level: int
    restart_s: float
    min_level: int = 0
    """Its smallest share: the first level of at least its elastic minimum of GPUs (a
    window never runs on fewer); above `max_level` when no level lies between them."""

    @property
    def top_speed(self) -> float:
        """Its largest share on its fastest model (0 on a cluster without GPUs)."""
        return float(self.speed.max(initial=0.0) * self.level_speed[self.max_level])


@dataclass
class SharePlan:
    """A pass's table of retraining jobs and what each may get."""

    views: list[JobView]
    statics: list[JobFacts]
    current: list[tuple[int, int] | None]
    remaining: np.ndarray
    value: np.ndarray
    """Uplift of each (job, model, level), with the restart delay a move costs."""
    keep_value: np.ndarray
    """Uplift of a running job if it keeps its current share (0 if it has none)."""
    room: ShareRoom
    price: np.ndarray
    sharing: np.ndarray
    """Per GPU model, whether a share below one GPU may be placed on it
    (`models_sharing`); `value` is zero for such shares on the others."""


class ShareRoom:
    """What retraining may still take per GPU model: milli-GPUs and task slots (the tasks
    that CPU and memory allow, for the jobs' typical per-task request). Plain lists: a
    handful of models, touched once per admission, where numpy scalars are slow."""

    def __init__(self, milli: list[int], slots: list[int]) -> None:
        self.milli = milli
        self.slots = slots

    @classmethod
    def free(cls, cluster: ClusterState, jobs: Sequence[JobView]) -> ShareRoom:
        models = len(cluster.gpu_models)
        has_model = cluster.model_idx >= 0
        milli = np.zeros(models, dtype=np.int64)
        np.add.at(milli, cluster.model_idx[has_model], cluster.gpu_free.sum(axis=1)[has_model])
        cpu = int(np.median([j.spec.task.cpu_milli for j in jobs])) if jobs else 0
        mem = int(np.median([j.spec.task.mem_mib for j in jobs])) if jobs else 0
        many = np.full(cluster.num_nodes, _MANY)
        by_cpu = cluster.cpu_free // cpu if cpu else many
        per_node = np.minimum(by_cpu, cluster.mem_free // mem if mem else many)
        slots = np.zeros(models, dtype=np.int64)
        np.add.at(slots, cluster.model_idx[has_model], per_node[has_model])
        return cls(milli.tolist(), slots.tolist())

    def copy(self) -> ShareRoom:
        return ShareRoom(list(self.milli), list(self.slots))

    def any(self) -> bool:
        """Whether the smallest share still fits somewhere."""
        smallest = _LEVELS[0]
        return any(m >= smallest and s >= 1 for m, s in zip(self.milli, self.slots, strict=True))

    def fits(self, model: int, level: int) -> bool:
        return self.milli[model] >= _LEVELS[level] and self.slots[model] >= _TASKS[level]

    def take(self, model: int, level: int) -> None:
        self.milli[model] -= _LEVELS[level]
        self.slots[model] -= _TASKS[level]

    def give_back(self, model: int, level: int) -> None:
        self.milli[model] += _LEVELS[level]
        self.slots[model] += _TASKS[level]

    def fits_step(self, model: int, level: int, bigger: int) -> bool:
        milli = _LEVELS[bigger] - _LEVELS[level]
        return self.milli[model] >= milli and self.slots[model] >= _TASKS[bigger] - _TASKS[level]

    def take_step(self, model: int, level: int, bigger: int) -> None:
        self.take(model, bigger)
        self.give_back(model, level)


def option_values(
    now: float,
    statics: Sequence[JobFacts],
    current: Sequence[tuple[int, int] | None],
    started: Sequence[bool],
    remaining: np.ndarray,
    models: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Uplift of every (job, model, level) when (re)started now — a job that ran before
    pays its restart delay — and of a running job keeping its share."""
    n = len(statics)
    if n == 0:
        return np.zeros((0, models, len(LEVELS_MILLI))), np.zeros(0)
    windows = _WindowArrays(statics)
    speed = (
        np.array([s.speed for s in statics])[:, :, None]
        * np.array([s.level_speed for s in statics])[:, None, :]
    )
    restart = np.array([s.restart_s for s in statics])
    delay = np.where(np.array(started, dtype=bool), restart, 0.0)
    rem = remaining[:, None, None]
    value = windows.uplift((now + delay)[:, None, None], rem, speed)
    levels = np.arange(len(LEVELS_MILLI))[None, :]
    outside = (levels > np.array([s.max_level for s in statics])[:, None]) | (
        levels < np.array([s.min_level for s in statics])[:, None]
    )
    value[np.broadcast_to(outside[:, None, :], value.shape)] = 0.0
    keep = np.zeros(n)
    rows = [r for r, share in enumerate(current) if share is not None]
    if rows:
        at = np.array(rows)
        share = np.array([current[r] for r in rows])
        kept_speed = speed[at, share[:, 0], share[:, 1]]
        kept = windows.subset(at).uplift(np.full(len(rows), now), remaining[at], kept_speed)
        keep[at] = kept
    return value, keep


class _WindowArrays:
    """Window facts of a pass's jobs as arrays, broadcastable against (job, model, level)."""

    def __init__(self, statics: Sequence[JobFacts], shape: tuple[int, ...] = (1, 1)) -> None:
        infos = [s.info for s in statics]
        self._statics = statics
        self.shape = shape
        tail = (-1, *shape)
        self.start = np.array([i.start for i in infos]).reshape(tail)
        self.deadline = np.array([i.deadline for i in infos]).reshape(tail)
        self.end = np.array([i.end for i in infos]).reshape(tail)
        self.gain = np.array([i.gain * i.serving for i in infos]).reshape(tail)  # delivered
        self.rate = np.array([i.decay_per_h / 3600.0 for i in infos]).reshape(tail)

    def subset(self, rows: np.ndarray) -> _WindowArrays:
        """The same facts for `rows` only, as flat (job,) arrays."""
        return _WindowArrays([self._statics[int(r)] for r in rows], shape=())

    def uplift(self, begin: np.ndarray, remaining: np.ndarray, speed: np.ndarray) -> np.ndarray:
        """Window uplift (accuracy-seconds) of finishing `remaining` work at `speed` from
        `begin`; zero past the deadline or without speed."""
        with np.errstate(divide="ignore", invalid="ignore"):
            finish = begin + np.where(speed > 0, remaining / speed, np.inf)
        since = np.maximum(finish - self.start, 0.0)
        span = self.end - self.start
        safe = np.where(self.rate > 0, self.rate, 1.0)
        with np.errstate(invalid="ignore", over="ignore"):
            decaying = self.gain * (np.exp(-safe * since) - np.exp(-safe * span)) / safe
        value = np.where(self.rate > 0, decaying, self.gain * (span - since))
        return np.where(finish <= self.deadline + _DEADLINE_SLACK_S, np.maximum(value, 0.0), 0.0)


def models_sharing(cluster: ClusterState) -> np.ndarray:
    """Per GPU model, whether some node of it lets tasks share a GPU: on the others a
    share below one GPU would hold a whole one, so none is offered there."""
    sharing = np.zeros(len(cluster.gpu_models), dtype=bool)
    has_model = cluster.model_idx >= 0
    sharing[cluster.model_idx[has_model & cluster.shares_gpus]] = True
    return sharing


def model_prices(statics: Sequence[JobFacts]) -> np.ndarray:
    """Per model, the median speed over the jobs that can use it (1 if none can)."""
    if not statics:
        return np.zeros(0)
    speeds = np.array([s.speed for s in statics])
    prices = np.ones(speeds.shape[1])
    for m in range(speeds.shape[1]):
        usable = speeds[:, m][speeds[:, m] > 0]
        if usable.size:
            prices[m] = float(np.median(usable))
    return prices


def share_of(view: JobView, cluster: ClusterState) -> tuple[int, int] | None:
    """(model index, level index) of a running job's placement, if it is a level."""
    if view.status is not JobStatus.RUNNING or view.placement is None:
        return None
    level = _LEVEL_INDEX.get(placed_milli(view.placement))
    if level is None:
        return None
    node = cluster.node_index[view.placement.tasks[0].node]
    return int(cluster.model_idx[node]), level


def is_window_job(spec: JobSpec) -> bool:
    return spec.kind == RETRAIN_KIND and window_info(spec) is not None


def is_hopeless(view: JobView, static: JobFacts, now: float) -> bool:
    """A waiting job that cannot meet its deadline even alone on its best share (or
    has no share between its elastic bounds)."""
    if view.status is JobStatus.RUNNING:
        return False
    if static.min_level > static.max_level:
        return True
    restart = static.restart_s if view.started_at is not None else 0.0
    left = static.info.deadline - now - restart
    need = (view.spec.work.total - view.done) / max(static.top_speed, 1e-12)
    return need > left


def remaining_work(view: JobView, now: float) -> float:
    total = view.spec.work.total
    done = view.done
    if view.status is JobStatus.RUNNING and view.shape is not None:
        done += view.spec.work.rate(view.shape, view.done) * max(0.0, now - view.service_since)
    return max(total - done, 0.0)


def placed_milli(placement: Placement) -> int:
    """Milli-GPU a placement holds over all its tasks."""
    return sum(len(t.gpus) * t.gpu_milli for t in placement.tasks)


def level_bounds(min_gpus: int, max_gpus: int) -> tuple[int, int]:
    """Indices of the smallest level of at least `min_gpus` GPUs and of the largest of at
    most `max_gpus`."""
    low = int(np.searchsorted(LEVELS_MILLI, min_gpus * MILLI, side="left")) if min_gpus > 1 else 0
    return low, int(np.searchsorted(LEVELS_MILLI, max_gpus * MILLI, side="right")) - 1


def level_shape(milli: int) -> tuple[int, int]:
    return (1, milli) if milli < MILLI else (milli // MILLI, MILLI)
