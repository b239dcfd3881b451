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
  restart). Per window it picks the streams' retraining configs jointly
  (`policies.continual.plan_configs`, a fluid model of the free capacity).
* `edf`: the same, but jobs are admitted earliest deadline first, each at its cheapest
  option that meets its deadline.
* `fairshare` (Ekya's fair baseline): every retraining job gets an equal share of the
  cluster's milli-GPUs, on the model with the most room, blind to deadlines and speed.

Ordinary jobs mixed in are placed first-fit in arrival order on what retraining leaves,
and are never preempted; nor is a retraining job whose spec says it may not be (it keeps
its share). The allocators are round policies (a pass every `realloc_s` seconds): a
round after arrivals re-plans running and waiting jobs together; other rounds only give
freed capacity to waiting jobs, which bounds the work on long runs.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from policies.base import Context, Policy, PolicyConfig, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.continual import (
    RETRAIN_KIND,
    RetrainingWork,
    Serving,
    WindowInfo,
    WindowOpening,
    fluid_uplifts,
    inference_models,
    plan_configs,
    speedup,
    split_inference,
    window_info,
)
from policies.decisions import Decision, Place, Preempt, SchedulingResult
from policies.fifo import FifoConfig, FifoFirstFit
from policies.gpu_models import names_variant
from policies.jobs import JobSpec, JobStatus, JobView, Placement, TaskPlacement, TaskRequest
from policies.placement import label_mask, model_mask, release

LEVELS_MILLI = np.array([250, 500, 1000, 2000, 4000, 8000], dtype=np.int64)
_LEVEL_INDEX = {int(level): i for i, level in enumerate(LEVELS_MILLI)}
_LEVELS = [int(x) for x in LEVELS_MILLI]
_TASKS = [max(1, x // MILLI) for x in _LEVELS]
"""Tasks (one per whole GPU, one for a fraction) a share of each level places."""
_MANY = 1 << 20
_EPS = 1e-6


@dataclass(frozen=True)
class ShareConfig(PolicyConfig):
    realloc_s: float = field(
        default=30.0,
        metadata={"help": "seconds between re-plans of capacity freed by completions"},
    )
    choose_configs: bool = field(
        default=True,
        metadata={"help": "pick each window's retraining config (else the stream's default)"},
    )


@dataclass(frozen=True, slots=True)
class _Static:
    """Per-job facts that do not change while the job lives."""

    info: WindowInfo
    speed: np.ndarray
    level_speed: np.ndarray
    max_level: int
    restart_s: float

    @property
    def top_speed(self) -> float:
        """Its largest share on its fastest model (0 on a cluster without GPUs)."""
        return float(self.speed.max(initial=0.0) * self.level_speed[self.max_level])


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
    room: _Room
    price: np.ndarray


class ShareAllocator(Policy):
    """Common pass every `realloc_s`: plan shares, realise them, backfill batch jobs."""

    config_type: ClassVar[type[PolicyConfig]] = ShareConfig

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        assert isinstance(self.config, ShareConfig)
        if self.config.realloc_s <= 0:
            raise ValueError("realloc_s must be positive")
        # A round policy: passes on completions would cost more than they gain.
        self._realloc_s = self.config.realloc_s
        self.round_s = self._realloc_s
        self._models: tuple[str, ...] = ()
        self._statics: dict[str, _Static] = {}
        self._speeds: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._backfill = FifoFirstFit(FifoConfig(blocking=False))

    # -- the pass -------------------------------------------------------------------

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        if self._arrived_since_last_round(snapshot):
            plan = self._table(snapshot, (*snapshot.running, *snapshot.pending))
        else:
            plan = self._round_table(snapshot)
        targets = self.choose(plan) if plan.views else {}
        state = snapshot.cluster.scratch()
        decisions = self._realise(plan, targets, state)
        decisions += self._place_batch(snapshot, state, ctx)
        return SchedulingResult(tuple(decisions))

    def _arrived_since_last_round(self, snapshot: Snapshot) -> bool:
        # Arrivals join the tail of `pending` (arrival order), so the last one tells.
        if not snapshot.pending:
            return False
        last = snapshot.pending[-1]
        return last.started_at is None and last.queued_since > snapshot.now - self._realloc_s

    def _round_table(self, snapshot: Snapshot) -> _Plan:
        """Between arrivals, freed capacity goes to waiting jobs. Running jobs are neither
        stolen from nor enlarged here: measured, that changed accuracy by under 0.1
        point while restarting thousands of jobs a day (docs/continual.md)."""
        if int(snapshot.cluster.gpu_free.max()) < LEVELS_MILLI[0]:
            return self._table(snapshot, ())  # nothing was freed
        return self._table(snapshot, snapshot.pending)

    def choose(self, plan: _Plan) -> dict[int, tuple[int, int]]:
        """Job row → (model index, level index) for every job that gets a share."""
        raise NotImplementedError

    # -- the table ----------------------------------------------------------------------

    def _table(self, snapshot: Snapshot, jobs: Sequence[JobView]) -> _Plan:
        """The retraining jobs among `jobs`, with the capacity they may share: free GPUs
        plus what they hold."""
        cluster = snapshot.cluster
        now = snapshot.now
        views: list[JobView] = []
        statics: list[_Static] = []
        current: list[tuple[int, int] | None] = []
        remaining: list[float] = []
        # A running job that may not be preempted keeps its share, out of the room.
        jobs = [v for v in jobs if v.spec.preemptible or v.status is not JobStatus.RUNNING]
        room = _Room.free(cluster, jobs)
        for view in jobs:
            static = self._static(view.spec, cluster.gpu_models)
            if static is None or _hopeless(view, static, now):
                continue
            views.append(view)
            statics.append(static)
            share = _share_of(view, cluster)
            current.append(share)
            if share is not None:
                room.give_back(*share)
            remaining.append(_remaining(view, now))
        rem = np.array(remaining, dtype=np.float64)
        started = [v.started_at is not None for v in views]
        value, keep = _values(now, statics, current, started, rem, len(cluster.gpu_models))
        return _Plan(views, statics, current, rem, value, keep, room, _prices(statics))

    def _static(self, spec: JobSpec, models: tuple[str, ...]) -> _Static | None:
        if models != self._models:
            self._statics.clear()
            self._speeds.clear()
            self._models = models
        static = self._statics.get(spec.id)
        if static is not None:
            return static
        info = window_info(spec)
        work = spec.work
        if info is None or not isinstance(work, RetrainingWork):
            return None
        max_gpus = spec.elastic.max_replicas if spec.elastic else 1
        max_level = int(np.searchsorted(LEVELS_MILLI, max_gpus * MILLI, side="right")) - 1
        if len(self._statics) > 50_000:
            self._statics.clear()  # jobs of long-past windows
        speed, levels = self._speed_of(spec, work, models)
        static = _Static(info, speed, levels, max_level, spec.restart_cost_s)
        self._statics[spec.id] = static
        return static

    def _speed_of(
        self, spec: JobSpec, work: RetrainingWork, models: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-model speed and per-level speed-up; shared by a stream's window jobs."""
        key = (tuple(work.throughput.items()), work.default, work.scaling, spec.allowed_models)
        cached = self._speeds.get(key)
        if cached is None:
            speed = np.array(
                [work.model_speed(m) if spec.allows(m) else 0.0 for m in models], dtype=np.float64
            )
            shapes = [_level_shape(int(x)) for x in LEVELS_MILLI]
            levels = np.array([speedup(n, milli, work.scaling) for n, milli in shapes])
            cached = self._speeds[key] = (speed, levels)
        return cached

    # -- realising targets on nodes ---------------------------------------------------------

    def _realise(
        self, plan: _Plan, targets: dict[int, tuple[int, int]], state: ClusterState
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for row, view in enumerate(plan.views):
            if view.status is JobStatus.RUNNING and targets.get(row) != plan.current[row]:
                decisions.append(Preempt(view.id, f"{self.name}: share reassigned"))
                assert view.placement is not None
                release(state, view.spec, view.placement)
        fitter = ShareFitter(state)
        for row, (model, level) in targets.items():
            if targets[row] == plan.current[row]:
                continue
            view = plan.views[row]
            # The target share, else smaller shares on its model, else other models.
            for m, lvl in self._fallbacks(plan, row, model, level):
                placed = fitter.fit(view.spec, m, int(LEVELS_MILLI[lvl]))
                if placed is not None:
                    decisions.append(Place(view.id, placed, self._reason(placed)))
                    break
        return decisions

    def _fallbacks(self, plan: _Plan, row: int, model: int, level: int) -> list[tuple[int, int]]:
        models = [model, *(m for m in range(plan.value.shape[1]) if m != model)]
        return [
            (m, lvl)
            for m in models
            for lvl in range(level, -1, -1)
            if plan.value[row, m, lvl] > 0 or (m == model and lvl == level)
        ]

    def _reason(self, placement: Placement) -> str:
        milli = placed_milli(placement)
        return f"{self.name}: {milli} milli-GPU on {placement.tasks[0].node}"

    def _place_batch(self, snapshot: Snapshot, state: ClusterState, ctx: Context) -> list[Decision]:
        decisions: list[Decision] = []
        for view in snapshot.pending:
            if _is_window_job(view.spec):
                continue
            placement = self._backfill.place(view.spec, state, ctx)
            if placement is not None:
                decisions.append(Place(view.id, placement, f"{self.name}: backfill"))
        return decisions


class _ValueGreedy(ShareAllocator):
    """Admission in `order`, each job at `option_order`, then marginal-uplift upgrades."""

    def choose(self, plan: _Plan) -> dict[int, tuple[int, int]]:
        room = plan.room.copy()
        levels = plan.value.shape[2]
        cost = LEVELS_MILLI[None, :] * plan.price[:, None]
        targets: dict[int, tuple[int, int]] = {}
        held: dict[int, float] = {}
        ranks = self.option_ranks(plan, cost)
        for row in self.order(plan, cost):
            if not room.any():
                break
            pick = self._admit(plan, row, ranks[row], room)
            if pick is None:
                continue
            room.take(*pick)
            targets[row] = pick
            held[row] = _value_of(plan, row, pick)
        _upgrade(plan, targets, held, room, cost, levels)
        return targets

    def order(self, plan: _Plan, cost: np.ndarray) -> Sequence[int]:
        raise NotImplementedError

    def option_ranks(self, plan: _Plan, cost: np.ndarray) -> np.ndarray:
        """Per job, its (model, level) options flattened and in order of preference."""
        raise NotImplementedError

    def _admit(
        self, plan: _Plan, row: int, ranked: np.ndarray, room: _Room
    ) -> tuple[int, int] | None:
        keep = plan.current[row]
        if keep is not None and plan.keep_value[row] > 0 and room.fits(*keep):
            return keep
        levels = plan.value.shape[2]
        values = plan.value[row].ravel()
        for flat in ranked.tolist():
            if values[flat] <= 0:
                break
            model, level = divmod(flat, levels)
            if room.fits(model, level):
                return model, level
        return None

    def plan_windows(self, openings: Sequence[WindowOpening], snapshot: Snapshot) -> list[int]:
        """Configs for the openings from a fluid model of the free capacity."""
        rate = _retraining_rate(openings, snapshot.cluster)
        return self.plan_windows_at(openings, rate, _backlog(snapshot) / max(rate, _EPS))

    def plan_windows_at(
        self, openings: Sequence[WindowOpening], rate: float, delay_s: float = 0.0
    ) -> list[int]:
        assert isinstance(self.config, ShareConfig)
        if not self.config.choose_configs:
            return [o.stream.default_config for o in openings]
        return plan_configs(openings, rate, delay_s=delay_s)


class ThiefAllocator(_ValueGreedy):
    """Ekya's thief: densest value first; low-value shares are stolen."""

    name = "thief"

    def plan_inference(
        self, serving: Sequence[Serving], openings: Sequence[WindowOpening], snapshot: Snapshot
    ) -> list[int]:
        """Per stream the grant maximising `s(x)·M − price·x` (`split_inference`): `M` is
        the stale accuracy-seconds plus its own fluid-plan uplift, and the price what the
        fluid plan's retraining loses per milli-GPU if inference takes its whole demand
        (a secant: one plan at each rate) on the model hosts place inference on."""
        demand = sum(item.stream.inference_milli for item in serving)
        if demand == 0 or not openings:
            return [item.stream.inference_milli for item in serving]  # nothing to trade
        cluster = snapshot.cluster
        full = _retraining_rate(openings, cluster)
        streams = [o.stream for o in openings]
        model = cluster.gpu_models[inference_models(streams, cluster.gpu_models)[0]]
        speed = float(np.median([s.throughput.get(model, 0.0) for s in streams]))
        uplifts = self._fluid(openings, full)
        reduced = self._fluid(openings, max(full - demand / MILLI * speed, 0.0))
        price = (sum(uplifts) - sum(reduced)) / demand
        own = {o.stream.id: u for o, u in zip(openings, uplifts, strict=True)}
        expected = [
            item.stream.curve.integral(item.accuracy, item.stream.window_s)
            + own.get(item.stream.id, 0.0)
            for item in serving
        ]
        return split_inference(serving, expected, price)

    def _fluid(self, openings: Sequence[WindowOpening], rate: float) -> list[float]:
        return fluid_uplifts(openings, self.plan_windows_at(openings, rate), rate)

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

    def option_ranks(self, plan: _Plan, cost: np.ndarray) -> np.ndarray:
        density = (plan.value / cost[None, :, :]).reshape(len(plan.views), -1)
        return np.argsort(-density, axis=1, kind="stable")


class EdfAllocator(_ValueGreedy):
    """Earliest deadline first, each job at its cheapest option that meets it."""

    name = "edf"

    def order(self, plan: _Plan, cost: np.ndarray) -> Sequence[int]:
        feasible = (plan.value > 0).reshape(len(plan.views), -1).any(axis=1) | (plan.keep_value > 0)
        rows = [r for r in range(len(plan.views)) if feasible[r]]
        return sorted(rows, key=lambda r: (plan.statics[r].info.deadline, plan.views[r].id))

    def option_ranks(self, plan: _Plan, cost: np.ndarray) -> np.ndarray:
        # Infeasible options sort last, so the first non-positive one ends the scan.
        priced = np.where(plan.value > 0, cost[None, :, :], np.inf)
        return np.argsort(priced.reshape(len(plan.views), -1), axis=1, kind="stable")


class FairShareAllocator(ShareAllocator):
    """Every retraining job gets an equal share of the milli-GPUs, wherever there is room
    (Ekya's fair baseline: blind to deadlines, accuracy and GPU speed)."""

    name = "fairshare"

    def _round_table(self, snapshot: Snapshot) -> _Plan:
        return self._table(snapshot, (*snapshot.running, *snapshot.pending))

    def choose(self, plan: _Plan) -> dict[int, tuple[int, int]]:
        room = plan.room.copy()
        fair = sum(room.milli) / len(plan.views)
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
            space = np.where(allowed, np.array(room.milli, dtype=np.float64), -1.0)
            model = int(np.argmax(space))
            if room.fits(model, level):
                targets[row] = (model, level)
                room.take(model, level)
        return targets

    def _fallbacks(self, plan: _Plan, row: int, model: int, level: int) -> list[tuple[int, int]]:
        return [(model, lvl) for lvl in range(level, -1, -1)]


# -- helpers ----------------------------------------------------------------------------


class ShareFitter:
    """Places shares on a scratch cluster state within one pass. Resources only shrink
    while it works, so a share that failed on a model fails again at that size or more
    for the same per-task CPU, memory, selector and tolerations; those attempts are skipped."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._nodes = [np.flatnonzero(state.model_idx == m) for m in range(len(state.gpu_models))]
        self._failed: dict[tuple[object, ...], int] = {}

    def fit(self, spec: JobSpec, model: int, milli: int) -> Placement | None:
        """Place `milli` milli-GPU for `spec` on one node of model index `model`: a
        fraction on the tightest GPU that fits, or whole GPUs on the node with the fewest
        whole GPUs free that still has enough. None if nothing fits."""
        state = self.state
        if not spec.allows(state.gpu_models[model]):
            return None
        task = spec.task
        nodes = self._nodes[model]
        # A variant request (`A100-80GB`) may take only some of a model's nodes.
        wanted = spec.allowed_models
        variant = wanted is not None and names_variant(wanted)
        allowed = model_mask(wanted, state)[nodes] if wanted is not None and variant else None
        labels = (tuple(sorted(spec.node_selector.items())), spec.tolerations)
        key = (model, task.cpu_milli, task.mem_mib, labels, wanted if variant else None)
        if milli >= self._failed.get(key, MILLI * 1000):
            return None
        count = max(1, milli // MILLI)
        ok = (state.cpu_free[nodes] >= count * task.cpu_milli) & (
            state.mem_free[nodes] >= count * task.mem_mib
        )
        if spec.node_selector or state.has_taints:
            ok &= label_mask(spec, state)[nodes]
        if allowed is not None:
            ok &= allowed
        free = state.gpu_free[nodes]
        placed = self._fraction(task, nodes, ok, free, milli) if milli < MILLI else None
        if milli >= MILLI:
            placed = self._whole(task, nodes, ok, free, count)
        if placed is None:
            self._failed[key] = milli
        return placed

    def _fraction(
        self, task: TaskRequest, nodes: np.ndarray, ok: np.ndarray, free: np.ndarray, milli: int
    ) -> Placement | None:
        fits = (free >= milli) & ok[:, None]
        if not fits.any():
            return None
        flat = int(np.argmin(np.where(fits, free, MILLI + 1)))
        row, gpu = divmod(flat, free.shape[1])
        node = int(nodes[row])
        self.state.allocate(node, (gpu,), milli, task.cpu_milli, task.mem_mib)
        return Placement((TaskPlacement(self.state.nodes[node].name, (gpu,), milli),))

    def _whole(
        self, task: TaskRequest, nodes: np.ndarray, ok: np.ndarray, free: np.ndarray, count: int
    ) -> Placement | None:
        whole = (free == MILLI).sum(axis=1)
        candidates = np.flatnonzero(ok & (whole >= count))
        if candidates.size == 0:
            return None
        row = int(candidates[np.argmin(whole[candidates])])
        node = int(nodes[row])
        name = self.state.nodes[node].name
        tasks = []
        for gpu in np.flatnonzero(free[row] == MILLI)[:count].tolist():
            self.state.allocate(node, (gpu,), MILLI, task.cpu_milli, task.mem_mib)
            tasks.append(TaskPlacement(name, (gpu,), MILLI))
        return Placement(tuple(tasks))


def _retraining_rate(openings: Sequence[WindowOpening], cluster: ClusterState) -> float:
    """Reference-GPU-seconds per second the free GPUs give the typical opening stream
    (median speed per model over the openings)."""
    free = _free_gpus_by_model(cluster)
    rate = 0.0
    for m, model in enumerate(cluster.gpu_models):
        speeds = [o.stream.throughput.get(model, 0.0) for o in openings]
        rate += free[m] * float(np.median(speeds))
    return rate


def _backlog(snapshot: Snapshot) -> float:
    """Reference-GPU-seconds of retraining still waiting (none at aligned openings: the
    previous windows' jobs are past their deadlines)."""
    waiting = [v for v in snapshot.pending if _is_window_job(v.spec)]
    return sum(max(v.spec.work.total - v.done, 0.0) for v in waiting)


def _free_gpus_by_model(cluster: ClusterState) -> np.ndarray:
    has_model = cluster.model_idx >= 0
    free = np.zeros(len(cluster.gpu_models), dtype=np.float64)
    np.add.at(free, cluster.model_idx[has_model], cluster.gpu_free.sum(axis=1)[has_model])
    return free / MILLI


def placed_milli(placement: Placement) -> int:
    """Milli-GPU a placement holds over all its tasks."""
    return sum(len(t.gpus) * t.gpu_milli for t in placement.tasks)


def _level_shape(milli: int) -> tuple[int, int]:
    return (1, milli) if milli < MILLI else (milli // MILLI, MILLI)


class _Room:
    """What retraining may still take per GPU model: milli-GPUs and task slots (the tasks
    that CPU and memory allow, for the jobs' typical per-task request). Plain lists: a
    handful of models, touched once per admission, where numpy scalars are slow."""

    def __init__(self, milli: list[int], slots: list[int]) -> None:
        self.milli = milli
        self.slots = slots

    @classmethod
    def free(cls, cluster: ClusterState, jobs: Sequence[JobView]) -> _Room:
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

    def copy(self) -> _Room:
        return _Room(list(self.milli), list(self.slots))

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


def _share_of(view: JobView, cluster: ClusterState) -> tuple[int, int] | None:
    """(model index, level index) of a running job's placement, if it is a level."""
    if view.status is not JobStatus.RUNNING or view.placement is None:
        return None
    level = _LEVEL_INDEX.get(placed_milli(view.placement))
    if level is None:
        return None
    node = cluster.node_index[view.placement.tasks[0].node]
    return int(cluster.model_idx[node]), level


def _is_window_job(spec: JobSpec) -> bool:
    return spec.kind == RETRAIN_KIND and window_info(spec) is not None


def _hopeless(view: JobView, static: _Static, now: float) -> bool:
    """A waiting job that cannot meet its deadline even alone on its best share."""
    if view.status is JobStatus.RUNNING:
        return False
    restart = static.restart_s if view.started_at is not None else 0.0
    left = static.info.deadline - now - restart
    need = (view.spec.work.total - view.done) / max(static.top_speed, 1e-12)
    return need > left


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
    windows = _WindowArrays(statics)
    speed = (
        np.array([s.speed for s in statics])[:, :, None]
        * np.array([s.level_speed for s in statics])[:, None, :]
    )
    restart = np.array([s.restart_s for s in statics])
    delay = np.where(np.array(started, dtype=bool), restart, 0.0)
    rem = remaining[:, None, None]
    value = windows.uplift((now + delay)[:, None, None], rem, speed)
    too_big = (
        np.arange(len(LEVELS_MILLI))[None, :] > np.array([s.max_level for s in statics])[:, None]
    )
    value[np.broadcast_to(too_big[:, None, :], value.shape)] = 0.0
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

    def __init__(self, statics: Sequence[_Static], shape: tuple[int, ...] = (1, 1)) -> None:
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
        return np.where(finish <= self.deadline + _EPS, np.maximum(value, 0.0), 0.0)


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
    room: _Room,
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
        if not room.fits_step(model, level, level + 1):
            continue
        room.take_step(model, level, level + 1)
        targets[row] = (model, level + 1)
        held[row] = float(plan.value[row, model, level + 1])
        offer(row)


def _arrival(view: JobView) -> tuple[float, str]:
    return view.spec.submit_time, view.id
