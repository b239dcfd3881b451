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

import numpy as np

from policies.base import Snapshot
from policies.cluster import MILLI, ClusterState
from policies.continual import (
    Serving,
    WindowOpening,
    fluid_uplifts,
    inference_models,
    plan_configs,
    split_inference,
)
from policies.jobs import JobView
from policies.share_allocator import ShareAllocator, ShareConfig
from policies.share_model import (
    LEVELS_MILLI,
    WHOLE_LEVEL,
    SharePlan,
    ShareRoom,
    is_window_job,
)

_MIN_RATE = 1e-6
"""Floor of the retraining rate when dividing by it (a cluster with no free GPUs)."""


class _ValueGreedy(ShareAllocator):
    """Admission in `order`, each job at `option_order`, then marginal-uplift upgrades."""

    def choose(self, plan: SharePlan) -> dict[int, tuple[int, int]]:
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

    def order(self, plan: SharePlan, cost: np.ndarray) -> Sequence[int]:
        raise NotImplementedError

    def option_ranks(self, plan: SharePlan, cost: np.ndarray) -> np.ndarray:
        """Per job, its (model, level) options flattened and in order of preference."""
        raise NotImplementedError

    def _admit(
        self, plan: SharePlan, row: int, ranked: np.ndarray, room: ShareRoom
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
        return self.plan_windows_at(openings, rate, _backlog(snapshot) / max(rate, _MIN_RATE))

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

    def order(self, plan: SharePlan, cost: np.ndarray) -> Sequence[int]:
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

    def option_ranks(self, plan: SharePlan, cost: np.ndarray) -> np.ndarray:
        density = (plan.value / cost[None, :, :]).reshape(len(plan.views), -1)
        return np.argsort(-density, axis=1, kind="stable")


class EdfAllocator(_ValueGreedy):
    """Earliest deadline first, each job at its cheapest option that meets it."""

    name = "edf"

    def order(self, plan: SharePlan, cost: np.ndarray) -> Sequence[int]:
        feasible = (plan.value > 0).reshape(len(plan.views), -1).any(axis=1) | (plan.keep_value > 0)
        rows = [r for r in range(len(plan.views)) if feasible[r]]
        return sorted(rows, key=lambda r: (plan.statics[r].info.deadline, plan.views[r].id))

    def option_ranks(self, plan: SharePlan, cost: np.ndarray) -> np.ndarray:
        # Infeasible options sort last, so the first non-positive one ends the scan.
        priced = np.where(plan.value > 0, cost[None, :, :], np.inf)
        return np.argsort(priced.reshape(len(plan.views), -1), axis=1, kind="stable")


class FairShareAllocator(ShareAllocator):
    """Every retraining job gets an equal share of the milli-GPUs, wherever there is room
    (Ekya's fair baseline: blind to deadlines, accuracy and GPU speed)."""

    name = "fairshare"

    def _round_table(self, snapshot: Snapshot) -> SharePlan:
        return self._table(snapshot, (*snapshot.running, *snapshot.pending))

    def choose(self, plan: SharePlan) -> dict[int, tuple[int, int]]:
        room = plan.room.copy()
        fair = sum(room.milli) / len(plan.views)
        fair_level = max(0, int(np.searchsorted(LEVELS_MILLI, fair, side="right")) - 1)
        targets: dict[int, tuple[int, int]] = {}
        rows = sorted(range(len(plan.views)), key=lambda r: _arrival(plan.views[r]))
        for row in rows:
            static = plan.statics[row]
            level = max(min(fair_level, static.max_level), static.min_level)
            keep = plan.current[row]
            if keep is not None and abs(keep[1] - level) <= 1:
                targets[row] = keep  # within a factor of two of fair: not worth a restart
                continue
            allowed = static.speed > 0
            space = np.where(allowed, np.array(room.milli, dtype=np.float64), -1.0)
            model = int(np.argmax(space))
            if not plan.sharing[model]:  # its GPUs go whole: the least share is one
                level = max(level, WHOLE_LEVEL)
            if room.fits(model, level):
                targets[row] = (model, level)
                room.take(model, level)
        return targets

    def _fallbacks(
        self, plan: SharePlan, row: int, model: int, level: int
    ) -> list[tuple[int, int]]:
        return [(model, lvl) for lvl in range(level, plan.statics[row].min_level - 1, -1)]


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
    waiting = [v for v in snapshot.pending if is_window_job(v.spec)]
    return sum(max(v.spec.work.total - v.done, 0.0) for v in waiting)


def _free_gpus_by_model(cluster: ClusterState) -> np.ndarray:
    has_model = cluster.model_idx >= 0
    free = np.zeros(len(cluster.gpu_models), dtype=np.float64)
    np.add.at(free, cluster.model_idx[has_model], cluster.gpu_free.sum(axis=1)[has_model])
    return free / MILLI


def _value_of(plan: SharePlan, row: int, pick: tuple[int, int]) -> float:
    if pick == plan.current[row]:
        return float(plan.keep_value[row])
    return float(plan.value[row, pick[0], pick[1]])


def _upgrade(
    plan: SharePlan,
    targets: dict[int, tuple[int, int]],
    held: dict[int, float],
    room: ShareRoom,
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
