"""Gavel (OSDI'20): heterogeneity-aware allocation LPs turned into placements by rounds.

Each 360 s round:

1. Throughputs T[i, j]: each job's work rate at its requested size on a packed placement
   of GPU model j (Gavel's oracle throughputs: the work model's rate), 0 where it may
   not or cannot run. The heterogeneity-agnostic variant replaces every positive
   throughput by 1.
2. X from the chosen objective (`policies.gavel_lp`): max-min fairness (Gavel's LAS),
   finish-time fairness, or max-sum throughput.
3. Priorities: X[i, j] divided by the share of model-j time job i has received among
   active jobs (X·10^9 for a job that has had none there).
4. Greedy: (job, model) pairs by priority, then X, each job at most once, while its
   scale factor fits the model's free GPUs.
5. Placement: a job that stays on the same GPU model keeps its GPUs (lease extension);
   others go largest first, on one node when one has room (best fit), else spread.
   Jobs not chosen are preempted: Gavel time-shares by checkpoint and restore.

The policy keeps no state between rounds: time received per model comes from the
snapshot (`JobView.service_by_model`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from policies.base import Context, PolicyConfig, RoundPolicy, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.decisions import Decision, Place, Preempt, Resize, SchedulingResult
from policies.gavel_lp import (
    finish_time_fairness,
    isolated_allocation,
    max_min_fairness,
    max_sum_throughput,
)
from policies.jobs import AllocationShape, JobStatus, JobView, Placement, TaskPlacement
from policies.perf_models import packed_placement
from policies.sia import ModelInfo, cluster_models

FloatArray = npt.NDArray[np.float64]
OBJECTIVES = ("max_min_fairness", "finish_time_fairness", "max_sum_throughput")
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


@dataclass(frozen=True)
class GavelAgnosticConfig(GavelConfig):
    heterogeneity_aware: bool = field(
        default=False, metadata={"help": "false: every GPU model looks equally fast"}
    )


class Gavel(RoundPolicy):
    name = "gavel"
    config_type = GavelConfig

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        if self.cfg.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown Gavel objective {self.cfg.objective!r}; one of {', '.join(OBJECTIVES)}"
            )
        self.round_s = self.cfg.round_s

    @property
    def cfg(self) -> GavelConfig:
        assert isinstance(self.config, GavelConfig)
        return self.config

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        jobs = sorted(
            (*snapshot.running, *snapshot.pending), key=lambda j: (j.spec.submit_time, j.id)
        )
        if not jobs:
            return SchedulingResult()
        models = cluster_models(snapshot.cluster)
        names = list(models)
        throughputs = job_throughputs(jobs, models, names)
        if not self.cfg.heterogeneity_aware:
            throughputs = np.where(throughputs > 0, 1.0, 0.0)
        scale = np.array([float(j.spec.gpus) for j in jobs])
        capacity = np.array([float(models[m].total_gpus) for m in names])
        x = self._allocate(jobs, throughputs, scale, capacity, snapshot.now)
        priorities = priority_matrix(x, time_received(jobs, names, snapshot.now))
        chosen = greedy_assignment(priorities, x, throughputs, scale, capacity)
        decisions = place_rounds(snapshot, jobs, chosen, names, models)
        notes = {"jobs": float(len(jobs)), "scheduled": float(len(chosen))}
        return SchedulingResult(tuple(decisions), notes=notes)

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


def _weight(job: JobView) -> float:
    value = job.spec.attributes.get("priority_weight", 1.0)
    return float(value) if isinstance(value, int | float) and value > 0 else 1.0


def job_throughputs(
    jobs: Sequence[JobView], models: Mapping[str, ModelInfo], names: Sequence[str]
) -> FloatArray:
    """T[i, j]: the job's work rate at its requested size, packed onto model j's nodes."""
    table = np.zeros((len(jobs), len(names)))
    for i, job in enumerate(jobs):
        gpus = job.spec.gpus
        for j, name in enumerate(names):
            info = models[name]
            if not job.spec.allows(name) or gpus > info.total_gpus or gpus < 1:
                continue
            placement = packed_placement(gpus, info.gpus_per_node)
            shape = AllocationShape(
                name,
                gpus,
                len(placement),
                replicas=job.spec.replicas,
                gpus_per_node=placement,
                gpu_models=(name,),
            )
            table[i, j] = max(job.spec.work.rate(shape, job.done), 0.0)
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
) -> dict[int, int]:
    """Job index → model index for this round: pairs by (priority, X) descending, each
    job once, while its GPUs fit the model's free GPUs. Pairs with zero priority still
    fill GPUs nobody else wants (as the Sia artifact's Gavel does)."""
    free = capacity.astype(float).copy()
    order = sorted(
        (-priorities[i, j], -x[i, j], i, j)
        for i in range(x.shape[0])
        for j in range(x.shape[1])
        if throughputs[i, j] > 0
    )
    chosen: dict[int, int] = {}
    for _, _, i, j in order:
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
    largest first; jobs left out are preempted."""
    state = snapshot.cluster.scratch()
    decisions: list[Decision] = []
    kept: set[str] = set()
    target = {jobs[i].id: names[j] for i, j in chosen.items()}
    for job in snapshot.running:
        if job.placement is None:
            continue
        model = target.get(job.id)
        if model is not None and job.shape is not None and job.shape.gpu_models == (model,):
            kept.add(job.id)
            continue
        _release(state, job, job.placement)
        if model is None:
            decisions.append(Preempt(job.id, "gavel: not scheduled this round"))
    order = sorted(
        (i for i in chosen if jobs[i].id not in kept),
        key=lambda i: (-jobs[i].spec.gpus, jobs[i].spec.submit_time, jobs[i].id),
    )
    for i in order:
        job = jobs[i]
        info = models[names[chosen[i]]]
        placement = _place(state, job, info)
        if placement is None:
            continue  # fragmented this round; the job waits (Gavel's mechanism may too)
        reason = f"gavel: {job.spec.gpus} × {info.name} this round"
        if job.status is JobStatus.RUNNING:
            decisions.append(Resize(job.id, placement, reason))
        else:
            decisions.append(Place(job.id, placement, reason))
    return decisions


def _place(state: ClusterState, job: JobView, info: ModelInfo) -> Placement | None:
    need = job.spec.gpus
    free = {
        n: [int(g) for g in np.flatnonzero(state.gpu_free[n, : state.gpu_count[n]] == MILLI)]
        for n in info.nodes
    }
    fits = [n for n in info.nodes if len(free[n]) >= need]
    if fits:
        node = min(fits, key=lambda n: (len(free[n]), n))
        picks = [(node, g) for g in free[node][:need]]
    else:
        spread = sorted(info.nodes, key=lambda n: (-len(free[n]), n))
        picks = [(n, g) for n in spread for g in free[n]][:need]
        if len(picks) < need:
            return None
    req = job.spec.task
    tasks = []
    for node, gpu in picks:
        state.allocate(node, (gpu,), MILLI, req.cpu_milli, req.mem_mib)
        tasks.append(TaskPlacement(state.nodes[node].name, (gpu,), MILLI))
    return Placement(tuple(tasks))


def _release(state: ClusterState, job: JobView, placement: Placement) -> None:
    req = job.spec.task
    for task in placement.tasks:
        node = state.node_index[task.node]
        state.release(node, task.gpus, task.gpu_milli, req.cpu_milli, req.mem_mib)
