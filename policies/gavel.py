"""Gavel (OSDI'20): heterogeneity-aware allocation LPs turned into placements by rounds.

Each 360 s round:

1. Throughputs T[i, j]: each job's work rate at its requested size on a packed placement
   of GPU model j (Gavel's oracle throughputs: the work model's rate), 0 where it may
   not or cannot run (no node of model j could hold one of its tasks). The
   heterogeneity-agnostic variant replaces every positive throughput by 1.
2. X from the chosen objective (`policies.gavel_lp`): max-min fairness (Gavel's LAS),
   finish-time fairness, or max-sum throughput.
   As in Gavel's simulator (`mechanism=gavel`), X is recomputed only when jobs arrived
   or left, at most every `reset_s` (1920 s); a job that arrived since has no share
   until then. The Sia artifact's port of Gavel (`mechanism=sia-artifact`, which
   `simulator.semantics` picks for Sia workloads) recomputes X every round, counts time
   received since arrival and keeps one queue across models.
3. Priorities: X[i, j] divided by the share of model-j time job i has received among
   active jobs since X was computed (each job starts with half a round, as Gavel's
   counters do; X·10^9 where nobody has time yet).
4. Greedy, Gavel's per-model queues: model by model (fastest first; in random order
   each round for the agnostic variant, as Gavel shuffles worker types), that model's
   jobs by priority, then X, each job at most once, while its scale factor fits the
   model's free GPUs.
5. Placement: a job that stays on the same GPU model keeps its GPUs (lease extension);
   others go largest first, on one node when one has room for all its tasks (best fit),
   else whole tasks spread over the nodes with the most room, each task where its CPU,
   memory, GPUs, selector and taints fit (`policies.placement.place_on_nodes`); a job
   that fits nowhere this round waits. Jobs not chosen are preempted: Gavel time-shares
   by checkpoint and restore.

A running job that may not be preempted keeps its placement, outside the LP, and its
GPUs are taken from the capacity; CPU-only jobs need no GPU time and are placed best-fit
after the GPU jobs. A sharing (fractional) task counts as one GPU in the LP.

The only state between rounds is the current allocation epoch (X, when it was computed
and each job's time received then); time received per model comes from the snapshot
(`JobView.service_by_model`), so both hosts, calling the policy at the same rounds, keep
the same epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from policies.base import Context, PolicyConfig, RoundPolicy, Snapshot
from policies.cluster import ClusterState
from policies.decisions import Decision, Place, Preempt, Resize, SchedulingResult
from policies.gavel_lp import (
    finish_time_fairness,
    isolated_allocation,
    max_min_fairness,
    max_sum_throughput,
)
from policies.jobs import AllocationShape, JobStatus, JobView
from policies.perf_models import packed_placement
from policies.placement import capacity_mask, place_on_nodes, release
from policies.round_placement import (
    ModelInfo,
    cluster_models,
    free_capacity,
    held_jobs,
    place_cpu_only,
    unplaced,
)

FloatArray = npt.NDArray[np.float64]
OBJECTIVES = ("max_min_fairness", "finish_time_fairness", "max_sum_throughput")
SIA_ARTIFACT = "sia-artifact"
MECHANISMS = ("gavel", SIA_ARTIFACT)
NEW_JOB_PRIORITY = 1e9


@dataclass(frozen=True)
class GavelConfig(PolicyConfig):
    objective: str = field(
        default="max_min_fairness",
        metadata={"help": f"allocation LP: {', '.join(OBJECTIVES)}"},
    )
    round_s: float = field(default=360.0, metadata={"help": "seconds between rounds"})
    heterogeneity_aware: bool = field(
        default=True, metadata={"help": "false: every GPU model looks equally fast"}
    )
    mechanism: str = field(
        default="gavel",
        metadata={
            "help": "gavel: Gavel's simulator (X on job changes at most every reset_s, "
            "counters restart there, per-model queues); sia-artifact: the Sia artifact's "
            "Gavel port (X every round, time since arrival, one queue across models)"
        },
    )
    reset_s: float = field(
        default=1920.0,
        metadata={
            "help": "least seconds between allocation recomputations (Gavel's "
            "minimum_time_between_allocation_resets); 0: whenever jobs change"
        },
    )


@dataclass
class AllocationEpoch:
    """One allocation X and the time-received counters it started (Gavel's reset)."""

    key: tuple[object, ...]
    start: float
    allocation: dict[str, FloatArray]
    received_at_start: dict[str, FloatArray]

    def rows(self, jobs: Sequence[JobView], models: int) -> FloatArray:
        """X for `jobs`; jobs that arrived since have none until the next reset."""
        empty = np.zeros(models)
        rows = [self.allocation.get(j.id, empty) for j in jobs]
        return np.array(rows, dtype=float).reshape(len(jobs), models)

    def baseline(self, jobs: Sequence[JobView], received: FloatArray) -> FloatArray:
        """Time received when the epoch started (0 for jobs that arrived since)."""
        empty = np.zeros(received.shape[1])
        rows = [self.received_at_start.get(j.id, empty) for j in jobs]
        return np.array(rows).reshape(received.shape)


@dataclass(frozen=True)
class GavelAgnosticConfig(GavelConfig):
    heterogeneity_aware: bool = field(
        default=False, metadata={"help": "false: every GPU model looks equally fast"}
    )


class Gavel(RoundPolicy):
    name = "gavel"
    config_type = GavelConfig
    defaults_follow = (
        "Gavel's paper and simulator: max-min fairness (LAS, max_min_fairness_perf), "
        "360 s rounds, its allocation resets every 1920 s. On Sia workloads the Sia "
        "artifact's port (mechanism=sia-artifact); the Sia paper ran Gavel with "
        "-o objective=max_sum_throughput"
    )

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown Gavel objective {self.cfg.objective!r}; one of {', '.join(OBJECTIVES)}"
            )
        if self.cfg.mechanism not in MECHANISMS:
            raise ValueError(
                f"unknown Gavel mechanism {self.cfg.mechanism!r}; one of {', '.join(MECHANISMS)}"
            )
        self.round_s = self.cfg.round_s
        self._epoch: AllocationEpoch | None = None

    @property
    def cfg(self) -> GavelConfig:
        assert isinstance(self.config, GavelConfig)
        return self.config

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        every = sorted(
            (*snapshot.running, *snapshot.pending), key=lambda j: (j.spec.submit_time, j.id)
        )
        if not every:
            return SchedulingResult()
        models = cluster_models(snapshot.cluster)
        names = list(models)
        held = held_jobs(snapshot)
        # Held jobs keep their GPUs; CPU-only jobs need none: neither enters the LP.
        jobs = [j for j in every if j.spec.task.num_gpus and j.id not in held]
        throughputs = job_throughputs(jobs, models, names, snapshot.cluster)
        if not self.cfg.heterogeneity_aware:
            throughputs = np.where(throughputs > 0, 1.0, 0.0)
        scale = np.array([float(j.spec.gpus) for j in jobs])
        free = free_capacity(snapshot.cluster, held.values(), models)
        capacity = np.array([float(free[m]) for m in names])
        received = time_received(jobs, names, snapshot.now)
        if self.cfg.mechanism == SIA_ARTIFACT:
            # Sia's port: X every round, time received since arrival, one queue.
            x = self._allocate(jobs, throughputs, scale, capacity, snapshot.now)
            priorities = priority_matrix(x, received)
            chosen = greedy_assignment(priorities, x, throughputs, scale, capacity)
        else:
            epoch = self._epoch_for(jobs, throughputs, scale, capacity, received, snapshot.now)
            x = epoch.rows(jobs, len(names))
            since = received - epoch.baseline(jobs, received) + self.cfg.round_s / 2
            priorities = priority_matrix(x, since)
            order = self._model_order(throughputs, ctx)
            chosen = greedy_assignment(priorities, x, throughputs, scale, capacity, order)
        decisions = place_rounds(snapshot, jobs, chosen, names, models)
        notes = {"jobs": float(len(every)), "scheduled": float(len(chosen))}
        return SchedulingResult(tuple(decisions), notes=notes)

    def _epoch_for(
        self,
        jobs: Sequence[JobView],
        throughputs: FloatArray,
        scale: FloatArray,
        capacity: FloatArray,
        received: FloatArray,
        now: float,
    ) -> AllocationEpoch:
        """Gavel recomputes X when jobs arrived or left (or capacity changed), at most
        every `reset_s`; each recomputation restarts the time-received counters."""
        key = (tuple(j.id for j in jobs), tuple(capacity))
        epoch = self._epoch
        if epoch is None or (key != epoch.key and now - epoch.start >= self.cfg.reset_s):
            x = self._allocate(jobs, throughputs, scale, capacity, now)
            ids = [j.id for j in jobs]
            epoch = AllocationEpoch(
                key, now, dict(zip(ids, x, strict=True)), dict(zip(ids, received, strict=True))
            )
            self._epoch = epoch
        return epoch

    def _model_order(self, throughputs: FloatArray, ctx: Context) -> list[int]:
        """Gavel fills one GPU model's queue after another: fastest first when it knows
        speeds (its V100, P100, K80), in a fresh random order each round when it does not."""
        count = throughputs.shape[1]
        if not self.cfg.heterogeneity_aware:
            return [int(j) for j in ctx.rng.permutation(count)]
        speed = throughputs.sum(axis=0)
        return sorted(range(count), key=lambda j: (-speed[j], j))

    def _allocate(
        self,
        jobs: Sequence[JobView],
        throughputs: FloatArray,
        scale: FloatArray,
        capacity: FloatArray,
        now: float,
    ) -> FloatArray:
        objective = self.cfg.objective
        if objective == "max_sum_throughput":
            return max_sum_throughput(throughputs, scale, capacity)
        if objective == "max_min_fairness":
            weights = np.array([_weight(j) for j in jobs])
            return max_min_fairness(throughputs, scale, capacity, weights)
        remaining = np.array([max(j.spec.work.total - j.done, 0.0) for j in jobs])
        done = np.array([j.done for j in jobs])
        iso = (throughputs * isolated_allocation(capacity, scale)).sum(axis=1)
        # Time the job would have needed in isolation for the work it has done.
        isolated_elapsed = np.where(iso > 0, done / np.where(iso > 0, iso, 1.0), 0.0)
        elapsed = np.array([now - j.spec.submit_time for j in jobs])
        return finish_time_fairness(
            throughputs, scale, capacity, elapsed, isolated_elapsed, remaining
        )


class GavelAgnostic(Gavel):
    """Gavel's heterogeneity-agnostic baseline: the same LP with every throughput 1."""

    name = "gavel-agnostic"
    config_type = GavelAgnosticConfig
    defaults_follow = "Gavel's heterogeneity-agnostic LAS (max_min_fairness), 360 s rounds"


def _weight(job: JobView) -> float:
    value = job.spec.attributes.get("priority_weight", 1.0)
    return float(value) if isinstance(value, int | float) and value > 0 else 1.0


def job_throughputs(
    jobs: Sequence[JobView],
    models: Mapping[str, ModelInfo],
    names: Sequence[str],
    cluster: ClusterState,
) -> FloatArray:
    """T[i, j]: the job's work rate at its requested size, packed onto model j's nodes;
    0 where no node of model j could ever hold one of its tasks."""
    table = np.zeros((len(jobs), len(names)))
    for i, job in enumerate(jobs):
        spec = job.spec
        gpus = spec.gpus
        fits = capacity_mask(spec, spec.task, cluster)
        for j, name in enumerate(names):
            info = models[name]
            if not spec.allows(name) or gpus > info.total_gpus or gpus < 1:
                continue
            if not fits[list(info.nodes)].any():
                continue
            placement = packed_placement(gpus, info.gpus_per_node)
            shape = AllocationShape(
                name,
                gpus,
                len(placement),
                replicas=spec.replicas,
                gpus_per_node=placement,
                gpu_models=(name,),
            )
            table[i, j] = max(spec.work.rate(shape, job.done), 0.0)
    return table


def time_received(jobs: Sequence[JobView], names: Sequence[str], now: float) -> FloatArray:
    """Seconds each job has run on each model (GPU-seconds over its GPU count)."""
    received = np.zeros((len(jobs), len(names)))
    for i, job in enumerate(jobs):
        gpus = max(job.spec.gpus, 1)
        for j, name in enumerate(names):
            received[i, j] = job.service_by_model.get(name, 0.0) / gpus
        if job.status is JobStatus.RUNNING and job.shape is not None:
            model = job.shape.gpu_model
            if model in names:
                received[i, names.index(model)] += max(now - job.service_since, 0.0)
    return received


def priority_matrix(x: FloatArray, received: FloatArray) -> FloatArray:
    """X over the job's share of the model's time among active jobs; X·10^9 for a job
    without time there yet (so new jobs run first, in proportion to X)."""
    totals = received.sum(axis=0)
    share = np.where(totals > 0, received / np.where(totals > 0, totals, 1.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(share > 0, x / np.where(share > 0, share, 1.0), x * NEW_JOB_PRIORITY)
    return np.asarray(np.where(x > 0, ratio, 0.0), dtype=float)


def greedy_assignment(
    priorities: FloatArray,
    x: FloatArray,
    throughputs: FloatArray,
    scale: FloatArray,
    capacity: FloatArray,
    model_order: Sequence[int] | None = None,
) -> dict[int, int]:
    """Job index → model index for this round, each job once, while its GPUs fit the
    model's free GPUs. With `model_order`, Gavel's per-worker-type queues: model by
    model, that model's jobs by (priority, X) descending. Without, the Sia artifact's
    single queue: every (job, model) pair by (priority, X). Jobs with zero priority
    still fill GPUs nobody else wants, as both do."""
    free = capacity.astype(float).copy()
    chosen: dict[int, int] = {}
    pairs = [(i, j) for i in range(x.shape[0]) for j in range(x.shape[1]) if throughputs[i, j] > 0]
    if model_order is None:
        queues = [sorted(pairs, key=lambda p: (-priorities[p], -x[p], p))]
    else:
        queues = [
            sorted((p for p in pairs if p[1] == j), key=lambda p: (-priorities[p], -x[p], p))
            for j in model_order
        ]
    for queue in queues:
        for i, j in queue:
            if i in chosen or scale[i] > free[j]:
                continue
            chosen[i] = j
            free[j] -= scale[i]
    return chosen


def place_rounds(
    snapshot: Snapshot,
    jobs: Sequence[JobView],
    chosen: Mapping[int, int],
    names: Sequence[str],
    models: Mapping[str, ModelInfo],
) -> list[Decision]:
    """Lease extension for jobs staying on their model; everyone else is placed afresh,
    largest first; jobs left out are preempted. Held jobs stay; CPU-only jobs go last."""
    state = snapshot.cluster.scratch()
    decisions: list[Decision] = []
    kept: set[str] = set()
    held = held_jobs(snapshot)
    target = {jobs[i].id: names[j] for i, j in chosen.items()}
    for job in snapshot.running:
        if job.placement is None or job.id in held:
            continue
        model = target.get(job.id)
        if model is not None and job.shape is not None and job.shape.gpu_models == (model,):
            kept.add(job.id)
            continue
        release(state, job.spec, job.placement)
        if model is None:
            decisions.append(Preempt(job.id, "gavel: not scheduled this round"))
    order = sorted(
        (i for i in chosen if jobs[i].id not in kept),
        key=lambda i: (-jobs[i].spec.gpus, jobs[i].spec.submit_time, jobs[i].id),
    )
    unplaced_jobs = []
    for i in order:
        job = jobs[i]
        info = models[names[chosen[i]]]
        reason = f"gavel: {job.spec.gpus} × {info.name} this round"
        nodes = np.array(info.nodes, dtype=np.int64)
        placement = place_on_nodes(job.spec, state, nodes, job.spec.replicas, spread=True)
        if placement is None:
            unplaced_jobs.append((job, reason))  # fragmented this round: the job waits
        elif job.status is JobStatus.RUNNING:
            decisions.append(Resize(job.id, placement, reason))
        else:
            decisions.append(Place(job.id, placement, reason))
    for job, reason in unplaced_jobs:
        decisions += unplaced(state, job, reason)
    decisions += place_cpu_only(snapshot, state, "gavel")
    return decisions
