"""The pass every share allocator runs (`ShareAllocator`): tabulate the retraining
jobs' options (`policies.share_model`), let the allocator choose a share per job,
realise the choices on nodes (`ShareFitter`), and backfill ordinary jobs first-fit on
what is left. The allocators themselves are in `policies.accuracy_aware`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from policies.base import Context, Policy, PolicyConfig, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.continual import RetrainingWork, speedup, window_info
from policies.decisions import Decision, Place, Preempt, SchedulingResult
from policies.fifo import FifoConfig, FifoFirstFit
from policies.gpu_models import names_variant
from policies.jobs import JobSpec, JobStatus, JobView, Placement, TaskPlacement, TaskRequest
from policies.placement import label_mask, model_mask, release
from policies.share_model import (
    LEVELS_MILLI,
    WHOLE_LEVEL,
    JobFacts,
    SharePlan,
    ShareRoom,
    is_hopeless,
    is_window_job,
    level_bounds,
    level_shape,
    model_prices,
    models_sharing,
    option_values,
    placed_milli,
    remaining_work,
    share_of,
)


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
        self._statics: dict[str, JobFacts] = {}
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

    def _round_table(self, snapshot: Snapshot) -> SharePlan:
        """Between arrivals, freed capacity goes to waiting jobs. Running jobs are neither
        stolen from nor enlarged here: measured, that changed accuracy by under 0.1
        point while restarting thousands of jobs a day (docs/continual.md)."""
        if int(snapshot.cluster.gpu_free.max()) < LEVELS_MILLI[0]:
            return self._table(snapshot, ())  # nothing was freed
        return self._table(snapshot, snapshot.pending)

    def choose(self, plan: SharePlan) -> dict[int, tuple[int, int]]:
        """Job row → (model index, level index) for every job that gets a share."""
        raise NotImplementedError

    # -- the table ----------------------------------------------------------------------

    def _table(self, snapshot: Snapshot, jobs: Sequence[JobView]) -> SharePlan:
        """The retraining jobs among `jobs`, with the capacity they may share: free GPUs
        plus what they hold."""
        cluster = snapshot.cluster
        now = snapshot.now
        views: list[JobView] = []
        statics: list[JobFacts] = []
        current: list[tuple[int, int] | None] = []
        remaining: list[float] = []
        # A running job that may not be preempted keeps its share, out of the room. Rows
        # go by job id: ties then part the same way whatever order a host lists jobs in.
        jobs = sorted(
            (v for v in jobs if v.spec.preemptible or v.status is not JobStatus.RUNNING),
            key=lambda v: v.id,
        )
        room = ShareRoom.free(cluster, jobs)
        for view in jobs:
            static = self._static(view.spec, cluster.gpu_models)
            if static is None or is_hopeless(view, static, now):
                continue
            views.append(view)
            statics.append(static)
            share = share_of(view, cluster)
            current.append(share)
            if share is not None:
                room.give_back(*share)
            remaining.append(remaining_work(view, now))
        rem = np.array(remaining, dtype=np.float64)
        started = [v.started_at is not None for v in views]
        value, keep = option_values(now, statics, current, started, rem, len(cluster.gpu_models))
        sharing = models_sharing(cluster)
        value[:, ~sharing, :WHOLE_LEVEL] = 0.0
        prices = model_prices(statics)
        return SharePlan(views, statics, current, rem, value, keep, room, prices, sharing)

    def _static(self, spec: JobSpec, models: tuple[str, ...]) -> JobFacts | None:
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
        bounds = spec.elastic
        min_level, max_level = level_bounds(
            *((bounds.min_replicas, bounds.max_replicas) if bounds else (1, 1))
        )
        if len(self._statics) > 50_000:
            self._statics.clear()  # jobs of long-past windows
        speed, levels = self._speed_of(spec, work, models)
        static = JobFacts(info, speed, levels, max_level, spec.restart_cost_s, min_level)
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
            shapes = [level_shape(int(x)) for x in LEVELS_MILLI]
            levels = np.array([speedup(n, milli, work.scaling) for n, milli in shapes])
            cached = self._speeds[key] = (speed, levels)
        return cached

    # -- realising targets on nodes ---------------------------------------------------------

    def _realise(
        self, plan: SharePlan, targets: dict[int, tuple[int, int]], state: ClusterState
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

    def _fallbacks(
        self, plan: SharePlan, row: int, model: int, level: int
    ) -> list[tuple[int, int]]:
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
            if is_window_job(view.spec):
                continue
            placement = self._backfill.place(view.spec, state, ctx)
            if placement is not None:
                decisions.append(Place(view.id, placement, f"{self.name}: backfill"))
        return decisions


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
        if milli < MILLI and state.whole_only:
            ok &= state.shares_gpus[nodes]
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
