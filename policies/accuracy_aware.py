"""Share allocators for continual-training windows: Ekya's thief, an EDF variant, fair share.

Each retraining job may get a GPU share from `LEVELS_MILLI` (a quarter or half of one
GPU by time-slicing, or 1–8 whole GPUs on one node), up to its stream's `max_gpus`, on
any allowed GPU model. A pass plans shares on the per-model capacity that retraining may
use (free GPUs plus those retraining jobs hold), then realises the plan on nodes.

* `thief` (Ekya's thief scheduler, made greedy): the value of an option (model, share)
  is the window uplift of `policies.continual` at the completion time it implies (zero if
  it misses the deadline). Jobs are admitted in descending value per unit of cost, where
  cost is milli-GPU times the GPU model's price (its median speed over the jobs, so a
  slow GPU is cheap); each takes its densest option that still fits. A job that cannot
  be admitted is stolen from: if running, it is preempted. Leftover capacity then goes,
  one share step at a time, to the job with the largest marginal uplift per cost.
  Running jobs keep their share when it still meets their deadline (moving costs a
  restart). Per window it picks each stream's retraining config (Ekya's per-camera
  config choice) for the share it can expect: a fair split of the stream's capacity.
* `edf`: the same, but jobs are admitted earliest deadline first, each at its cheapest
  option that meets its deadline.
* `fairshare` (Ekya's fair baseline): every retraining job gets an equal share of the
  cluster's milli-GPUs, on the model with the most room, blind to deadlines and speed.

Ordinary jobs mixed in are placed first-fit in arrival order on what retraining leaves,
and are never preempted. Arrivals are planned at once; capacity freed by completions is
re-planned every `realloc_s` seconds (a pass between ticks only asks to be woken), which
bounds the planning work on long runs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from policies.base import Context, Policy, PolicyConfig, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.continual import (
    RetrainingWork,
    WindowInfo,
    WindowOpening,
    best_config,
    speedup,
    window_info,
)
from policies.decisions import Decision, Place, Preempt, SchedulingResult
from policies.fifo import FifoConfig, FifoFirstFit
from policies.jobs import JobSpec, JobStatus, JobView, Placement, TaskPlacement

LEVELS_MILLI = np.array([250, 500, 1000, 2000, 4000, 8000], dtype=np.int64)
_LEVEL_INDEX = {int(level): i for i, level in enumerate(LEVELS_MILLI)}
_EPS = 1e-6


@dataclass(frozen=True)
class ShareConfig(PolicyConfig):
    realloc_s: float = field(
        default=30.0,
        metadata={"help": "seconds between re-plans of capacity freed by completions"},
    )


@dataclass(frozen=True, slots=True)
class _Static:
    """Per-job facts that do not change while the job lives."""

    info: WindowInfo
    speed: np.ndarray
    level_speed: np.ndarray
    max_level: int
    restart_s: float


@dataclass
class _Plan:
    """A pass's table of retraining jobs and what each may get."""

    views: list[JobView]
    statics: list[_Static]
    current: list[tuple[int, int] | None]
    remaining: np.ndarray
    value: np.ndarray
    """Uplift of each (job, model, level), with the restart delay a move costs."""
    keep_value: np.ndarray
    """Uplift of a running job if it keeps its current share (0 if it has none)."""
    capacity: np.ndarray
    price: np.ndarray


class ShareAllocator(Policy):
    """Common pass: gate on arrivals/ticks, plan shares, realise them, backfill."""

    config_type: ClassVar[type[PolicyConfig]] = ShareConfig
    round_s = None

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        assert isinstance(self.config, ShareConfig)
        if self.config.realloc_s <= 0:
            raise ValueError("realloc_s must be positive")
        self._realloc_s = self.config.realloc_s
        self._statics: dict[tuple[str, tuple[str, ...]], _Static] = {}
        self._backfill = FifoFirstFit(FifoConfig(blocking=False))

    # -- the pass -------------------------------------------------------------------

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        now = snapshot.now
        if not self._due(snapshot):
            return SchedulingResult(wake_at=self._next_tick(now))
        plan = self._table(snapshot)
        targets = self.choose(plan) if plan.views else {}
        state = snapshot.cluster.scratch()
        decisions = self._realise(plan, targets, state)
        decisions += self._place_batch(snapshot, state, ctx)
        return SchedulingResult(tuple(decisions), wake_at=self._wake(snapshot, plan, state))

    def choose(self, plan: _Plan) -> dict[int, tuple[int, int]]:
        """Job row → (model index, level index) for every job that gets a share."""
        raise NotImplementedError

    def _due(self, snapshot: Snapshot) -> bool:
        now = snapshot.now
        ticks = now / self._realloc_s
        if abs(ticks - round(ticks)) * self._realloc_s < _EPS:
            return True
        return any(j.queued_since == now for j in snapshot.pending)

    def _next_tick(self, now: float) -> float:
        return (math.floor(now / self._realloc_s + _EPS) + 1) * self._realloc_s

    def _wake(self, snapshot: Snapshot, plan: _Plan, state: ClusterState) -> float | None:
        waiting = any(window_info(j.spec) is not None for j in snapshot.pending)
        room = bool(plan.views) and int(state.gpu_free.max()) >= LEVELS_MILLI[0]
        return self._next_tick(snapshot.now) if waiting or room else None

    # -- the table ----------------------------------------------------------------------

    def _table(self, snapshot: Snapshot) -> _Plan:
        cluster = snapshot.cluster
        now = snapshot.now
        views: list[JobView] = []
        statics: list[_Static] = []
        current: list[tuple[int, int] | None] = []
        remaining: list[float] = []
        capacity = _free_by_model(cluster)
        for view in (*snapshot.running, *snapshot.pending):
            static = self._static(view.spec, cluster.gpu_models)
            if static is None:
                continue
            views.append(view)
            statics.append(static)
            share = _share_of(view, cluster)
            current.append(share)
            if share is not None:
                capacity[share[0]] += LEVELS_MILLI[share[1]]
            remaining.append(_remaining(view, now))
        rem = np.array(remaining, dtype=np.float64)
        started = [v.started_at is not None for v in views]
        value, keep = _values(now, statics, current, started, rem, len(cluster.gpu_models))
        return _Plan(views, statics, current, rem, value, keep, capacity, _prices(statics))

    def _static(self, spec: JobSpec, models: tuple[str, ...]) -> _Static | None:
        key = (spec.id, models)
        static = self._statics.get(key)
        if static is not None:
            return static
        info = window_info(spec)
        work = spec.work
        if info is None or not isinstance(work, RetrainingWork):
            return None
        speed = np.array(
            [work.model_speed(m) if spec.allows(m) else 0.0 for m in models], dtype=np.float64
        )
        levels = np.array([speedup(*_level_shape(int(x)), work.scaling) for x in LEVELS_MILLI])
        max_gpus = spec.elastic.max_replicas if spec.elastic else 1
        max_level = int(np.searchsorted(LEVELS_MILLI, max_gpus * MILLI, side="right")) - 1
        if len(self._statics) > 50_000:
            self._statics.clear()  # jobs of long-past windows
        static = _Static(info, speed, levels, max_level, spec.restart_cost_s)
        self._statics[key] = static
        return static

    # -- realising targets on nodes ---------------------------------------------------------

    def _realise(
        self, plan: _Plan, targets: dict[int, tuple[int, int]], state: ClusterState
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for row, view in enumerate(plan.views):
            if view.status is JobStatus.RUNNING and targets.get(row) != plan.current[row]:
                decisions.append(Preempt(view.id, f"{self.name}: share reassigned"))
                _release(state, view)
        for row, (model, level) in targets.items():
            if targets[row] == plan.current[row]:
                continue
            view = plan.views[row]
            placed = self._fit_any(plan, row, model, level, state)
            if placed is not None:
                decisions.append(Place(view.id, placed, self._reason(placed)))
        return decisions

    def _fit_any(
        self, plan: _Plan, row: int, model: int, level: int, state: ClusterState
    ) -> Placement | None:
        """The target share, else smaller shares on its model, else other models."""
        spec = plan.views[row].spec
        for m, lvl in self._fallbacks(plan, row, model, level):
            placed = fit_share(spec, m, int(LEVELS_MILLI[lvl]), state)
            if placed is not None:
                return placed
        return None

    def _fallbacks(self, plan: _Plan, row: int, model: int, level: int) -> list[tuple[int, int]]:
        models = [model, *(m for m in range(plan.value.shape[1]) if m != model)]
        return [
            (m, lvl)
            for m in models
            for lvl in range(level, -1, -1)
            if plan.value[row, m, lvl] > 0 or (m == model and lvl == level)
        ]

    def _reason(self, placement: Placement) -> str:
        milli = placement.gpu_milli_total
        return f"{self.name}: {milli} milli-GPU on {placement.tasks[0].node}"

    def _place_batch(self, snapshot: Snapshot, state: ClusterState, ctx: Context) -> list[Decision]:
        decisions: list[Decision] = []
        for view in snapshot.pending:
            if window_info(view.spec) is not None:
                continue
            placement = self._backfill.place(view.spec, state, ctx)
            if placement is not None:
                decisions.append(Place(view.id, placement, f"{self.name}: backfill"))
        return decisions


class _ValueGreedy(ShareAllocator):
    """Admission in `order`, each job at `option_order`, then marginal-uplift upgrades."""

    def choose(self, plan: _Plan) -> dict[int, tuple[int, int]]:
        capacity = plan.capacity.astype(np.float64)
        levels = plan.value.shape[2]
        cost = LEVELS_MILLI[None, :] * plan.price[:, None]
        targets: dict[int, tuple[int, int]] = {}
        held: dict[int, float] = {}
        for row in self.order(plan, cost):
            pick = self._admit(plan, row, cost, capacity)
            if pick is None:
                continue
            model, level = pick
            capacity[model] -= LEVELS_MILLI[level]
            targets[row] = pick
            held[row] = _value_of(plan, row, pick)
        _upgrade(plan, targets, held, capacity, cost, levels)
        return targets

    def order(self, plan: _Plan, cost: np.ndarray) -> Sequence[int]:
        raise NotImplementedError

    def option_order(self, plan: _Plan, row: int, cost: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _admit(
        self, plan: _Plan, row: int, cost: np.ndarray, capacity: np.ndarray
    ) -> tuple[int, int] | None:
        keep = plan.current[row]
        if (
            keep is not None
            and plan.keep_value[row] > 0
            and capacity[keep[0]] >= LEVELS_MILLI[keep[1]]
        ):
            return keep
        levels = plan.value.shape[2]
        for flat in self.option_order(plan, row, cost):
            model, level = divmod(int(flat), levels)
            if plan.value[row, model, level] <= 0:
                break
            if capacity[model] >= LEVELS_MILLI[level]:
                return model, level
        return None

    def plan_windows(self, openings: Sequence[WindowOpening], snapshot: Snapshot) -> list[int]:
        """Each stream's config for the speed a fair split of its capacity would give."""
        gpus = snapshot.cluster.gpus_of_model()
        active = len(openings) + sum(
            1 for j in (*snapshot.running, *snapshot.pending) if window_info(j.spec) is not None
        )
        choices = []
        for opening in openings:
            stream = opening.stream
            rates = {m: stream.throughput.get(m, 0.0) for m in gpus}
            capacity = sum(n * rates[m] for m, n in gpus.items())
            fastest = max(rates.values(), default=0.0) * speedup(stream.max_gpus, MILLI, 0.9)
            speed = min(capacity / max(1, active), fastest)
            choices.append(best_config(opening, speed))
        return choices


class ThiefAllocator(_ValueGreedy):
    """Ekya's thief: densest value first; low-value shares are stolen."""

    name = "thief"

    def order(self, plan: _Plan, cost: np.ndarray) -> Sequence[int]:
        density = plan.value / cost[None, :, :]
        best = density.reshape(len(plan.views), -1).max(axis=1)
        keep = np.array(
            [
                plan.keep_value[r] / cost[c[0], c[1]] if c is not None else 0.0
                for r, c in enumerate(plan.current)
            ]
        )
        best = np.maximum(best, keep)
        return [int(r) for r in np.argsort(-best, kind="stable") if best[r] > 0]

    def option_order(self, plan: _Plan, row: int, cost: np.ndarray) -> np.ndarray:
        return np.argsort(-(plan.value[row] / cost).ravel(), kind="stable")


class EdfAllocator(_ValueGreedy):
    """Earliest deadline first, each job at its cheapest option that meets it."""

    name = "edf"

    def order(self, plan: _Plan, cost: np.ndarray) -> Sequence[int]:
        feasible = (plan.value > 0).reshape(len(plan.views), -1).any(axis=1) | (plan.keep_value > 0)
        rows = [r for r in range(len(plan.views)) if feasible[r]]
        return sorted(rows, key=lambda r: (plan.statics[r].info.deadline, plan.views[r].id))

    def option_order(self, plan: _Plan, row: int, cost: np.ndarray) -> np.ndarray:
        # Infeasible options sort last, so the first non-positive one ends the scan.
        priced = np.where(plan.value[row] > 0, cost, np.inf)
        return np.argsort(priced.ravel(), kind="stable")


class FairShareAllocator(ShareAllocator):
    """Every retraining job gets an equal share of the milli-GPUs, wherever there is room
    (Ekya's fair baseline: blind to deadlines, accuracy and GPU speed)."""

    name = "fairshare"

    def choose(self, plan: _Plan) -> dict[int, tuple[int, int]]:
        capacity = plan.capacity.astype(np.float64)
        fair = capacity.sum() / len(plan.views)
        fair_level = max(0, int(np.searchsorted(LEVELS_MILLI, fair, side="right")) - 1)
        targets: dict[int, tuple[int, int]] = {}
        rows = sorted(range(len(plan.views)), key=lambda r: _arrival(plan.views[r]))
        for row in rows:
            level = min(fair_level, plan.statics[row].max_level)
            keep = plan.current[row]
            if keep is not None and abs(keep[1] - level) <= 1:
                targets[row] = keep  # within a factor of two of fair: not worth a restart
                continue
            allowed = plan.statics[row].speed > 0
            room = np.where(allowed, capacity, -1.0)
            model = int(np.argmax(room))
            if room[model] >= LEVELS_MILLI[level]:
                targets[row] = (model, level)
                capacity[model] -= LEVELS_MILLI[level]
        return targets

    def _fallbacks(self, plan: _Plan, row: int, model: int, level: int) -> list[tuple[int, int]]:
        return [(model, lvl) for lvl in range(level, -1, -1)]


# -- helpers ----------------------------------------------------------------------------


def fit_share(spec: JobSpec, model: int, milli: int, state: ClusterState) -> Placement | None:
    """Place `milli` milli-GPU for `spec` on one node of GPU model index `model` (mutating
    `state`): a fraction on the tightest GPU that fits, or whole GPUs on the node with the
    fewest whole GPUs free that still has enough. None if nothing fits."""
    nodes = np.flatnonzero(state.model_idx == model)
    if spec.allowed_models is not None and state.gpu_models[model] not in spec.allowed_models:
        return None
    task = spec.task
    count = max(1, milli // MILLI)
    ok = (state.cpu_free[nodes] >= count * task.cpu_milli) & (
        state.mem_free[nodes] >= count * task.mem_mib
    )
    free = state.gpu_free[nodes]
    if milli < MILLI:
        fits = (free >= milli) & ok[:, None]
        if not fits.any():
            return None
        flat = int(np.argmin(np.where(fits, free, MILLI + 1)))
        row, gpu = divmod(flat, free.shape[1])
        node = int(nodes[row])
        state.allocate(node, (gpu,), milli, task.cpu_milli, task.mem_mib)
        return Placement((TaskPlacement(state.nodes[node].name, (gpu,), milli),))
    whole = (free == MILLI).sum(axis=1)
    candidates = np.flatnonzero(ok & (whole >= count))
    if candidates.size == 0:
        return None
    row = int(candidates[np.argmin(whole[candidates])])
    node = int(nodes[row])
    gpus = [int(g) for g in np.flatnonzero(free[row] == MILLI)[:count]]
    tasks = []
    for gpu in gpus:
        state.allocate(node, (gpu,), MILLI, task.cpu_milli, task.mem_mib)
        tasks.append(TaskPlacement(state.nodes[node].name, (gpu,), MILLI))
    return Placement(tuple(tasks))


def _level_shape(milli: int) -> tuple[int, int]:
    return (1, milli) if milli < MILLI else (milli // MILLI, MILLI)


def _free_by_model(cluster: ClusterState) -> np.ndarray:
    free = cluster.gpu_free.sum(axis=1)
    capacity = np.zeros(len(cluster.gpu_models), dtype=np.int64)
    has_model = cluster.model_idx >= 0
    np.add.at(capacity, cluster.model_idx[has_model], free[has_model])
    return capacity


def _share_of(view: JobView, cluster: ClusterState) -> tuple[int, int] | None:
    """(model index, level index) of a running job's placement, if it is a level."""
    if view.status is not JobStatus.RUNNING or view.placement is None:
        return None
    level = _LEVEL_INDEX.get(view.placement.gpu_milli_total)
    if level is None:
        return None
    node = cluster.node_index[view.placement.tasks[0].node]
    return int(cluster.model_idx[node]), level


def _remaining(view: JobView, now: float) -> float:
    total = view.spec.work.total
    done = view.done
    if view.status is JobStatus.RUNNING and view.shape is not None:
        done += view.spec.work.rate(view.shape, view.done) * max(0.0, now - view.service_since)
    return max(total - done, 0.0)


def _values(
    now: float,
    statics: Sequence[_Static],
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
    speed = (
        np.array([s.speed for s in statics])[:, :, None]
        * np.array([s.level_speed for s in statics])[:, None, :]
    )
    delay = np.array(
        [s.restart_s if begun else 0.0 for s, begun in zip(statics, started, strict=True)]
    )
    value = _uplift_at(statics, now + delay[:, None, None], remaining[:, None, None], speed)
    max_level = np.array([s.max_level for s in statics])
    value[np.arange(len(LEVELS_MILLI))[None, None, :] > max_level[:, None, None]] = 0.0
    keep = np.zeros(n)
    for row, share in enumerate(current):
        if share is not None:
            one = speed[row : row + 1, share[0] : share[0] + 1, share[1] : share[1] + 1]
            kept = _uplift_at([statics[row]], np.full((1, 1, 1), now), remaining[row], one)
            keep[row] = float(kept[0, 0, 0])
    return value, keep


def _uplift_at(
    statics: Sequence[_Static],
    begin: np.ndarray,
    remaining: np.ndarray | float,
    speed: np.ndarray,
) -> np.ndarray:
    """Window uplift (accuracy-seconds) of finishing `remaining` work at `speed` from
    `begin`; zero past the deadline or without speed."""
    start = np.array([s.info.start for s in statics])[:, None, None]
    deadline = np.array([s.info.deadline for s in statics])[:, None, None]
    end = np.array([s.info.end for s in statics])[:, None, None]
    gain = np.array([s.info.gain for s in statics])[:, None, None]
    rate = np.array([s.info.decay_per_h / 3600.0 for s in statics])[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        finish = begin + np.where(speed > 0, remaining / speed, np.inf)
    since = np.maximum(finish - start, 0.0)
    span = end - start
    safe = np.where(rate > 0, rate, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        decaying = gain * (np.exp(-safe * since) - np.exp(-safe * span)) / safe
    value = np.where(rate > 0, decaying, gain * (span - since))
    return np.where(finish <= deadline + _EPS, np.maximum(value, 0.0), 0.0)


def _prices(statics: Sequence[_Static]) -> np.ndarray:
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


def _value_of(plan: _Plan, row: int, pick: tuple[int, int]) -> float:
    if pick == plan.current[row]:
        return float(plan.keep_value[row])
    return float(plan.value[row, pick[0], pick[1]])


def _upgrade(
    plan: _Plan,
    targets: dict[int, tuple[int, int]],
    held: dict[int, float],
    capacity: np.ndarray,
    cost: np.ndarray,
    levels: int,
) -> None:
    """Give leftover capacity one share step at a time to the largest marginal uplift
    per cost, on the model each job already has."""
    heap: list[tuple[float, int]] = []

    def offer(row: int) -> None:
        model, level = targets[row]
        nxt = level + 1
        if nxt >= levels or nxt > plan.statics[row].max_level:
            return
        gain = float(plan.value[row, model, nxt]) - held[row]
        if gain > 0:
            step = cost[model, nxt] - cost[model, level]
            heapq.heappush(heap, (-gain / step, row))

    for row in targets:
        offer(row)
    while heap:
        _, row = heapq.heappop(heap)
        model, level = targets[row]
        step = LEVELS_MILLI[level + 1] - LEVELS_MILLI[level]
        if capacity[model] < step:
            continue
        capacity[model] -= step
        targets[row] = (model, level + 1)
        held[row] = float(plan.value[row, model, level + 1])
        offer(row)


def _arrival(view: JobView) -> tuple[float, str]:
    return view.spec.submit_time, view.id


def _release(state: ClusterState, view: JobView) -> None:
    assert view.placement is not None
    req = view.spec.task
    for task in view.placement.tasks:
        node = state.node_index[task.node]
        state.release(node, task.gpus, task.gpu_milli, req.cpu_milli, req.mem_mib)
