"""Sia (SOSP'23): heterogeneity-aware, goodput-optimised allocation by an ILP each round.

Every 60 s round:

1. *Configurations*: per GPU model with R GPUs per node, powers of two up to R within a
   node, then whole nodes (2R, 3R, ...), up to the node count the jobs' throughput models
   reach (`GoodputHints.max_nodes`) and 64 GPUs.
2. *Utility matrix G* (jobs × configurations): the job's batch-optimised goodput on each
   valid configuration (its fitted model on that GPU model; before it has run there, its
   model on another GPU model scaled by the 1-GPU probe ratio; before it has run
   anywhere, 1 on each model's 1-GPU configuration), divided by the row's smallest
   entry. Invalid entries get ε. Every configuration but the job's current one is scaled
   by the restart factor r = max(T − N·S, 0)/(T + S) (age T, restarts N, restart cost S;
   r = 1 while T < S). Then U = round(G^p, 2) clipped at 3000, with p = −0.5.
3. *ILP* (`policies.sia_ilp`): binary A_ij, at most one configuration per job, GPUs per
   model within capacity, jobs still paying a restart delay pinned to their
   configuration; minimise Σ A∘U + λ·(jobs left unallocated), λ = 1.1. Rigid jobs get
   one variable per GPU model at their fixed GPU count (a sharing task counts as one
   GPU; ε on models where no node could hold one of their tasks). Solved exactly by a
   dynamic program over GPUs used per model on small clusters, by HiGHS on large ones.
4. *Placement* (`policies.round_placement`): kept jobs stay put; moved and new jobs go
   largest first, multi-node configurations on whole free nodes, single-node ones
   best-fit on one node, so no node holds two distributed jobs; every task where its CPU,
   memory, GPUs, selector and taints fit (`policies.placement.place_on_nodes`), whole
   tasks per node. If a model is too fragmented, all its jobs are repacked (each trying
   its old GPUs first); a job that still fits nowhere waits.

Only elastic jobs of one-GPU replicas that report goodput hints are resized; the rest
run at their requested size. A running job that may not be preempted keeps its
placement and its GPUs stay out of the ILP's capacity; CPU-only jobs take no part in
the ILP and are placed best-fit after the GPU jobs.

The policy is stateless between rounds: the current configuration, restarts and age come
from the snapshot, the goodput models from the jobs' hints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from policies.base import Context, PolicyConfig, RoundPolicy, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.decisions import (
    SchedulingResult,
)
from policies.elastic import RIGID, SCALE_GPUS, GoodputHints
from policies.jobs import (
    AllocationShape,
    Elasticity,
    JobSpec,
    JobStatus,
    JobView,
)
from policies.perf_models import packed_placement
from policies.placement import capacity_mask
from policies.round_placement import (
    ModelInfo,
    cluster_models,
    free_capacity,
    held_jobs,
    place_allocations,
)
from policies.sia_ilp import Allocation, check_solver, solve_allocation

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SiaConfig(PolicyConfig):
    p: float = field(default=-0.5, metadata={"help": "fairness power applied to utilities"})
    lambda_unallocated: float = field(
        default=1.1, metadata={"help": "ILP cost of leaving a job without GPUs (λ_n)"}
    )
    round_s: float = field(default=60.0, metadata={"help": "seconds between rounds"})
    clip: float = field(default=3000.0, metadata={"help": "cap on powered utilities"})
    epsilon: float = field(default=1e-4, metadata={"help": "goodput of invalid configurations"})
    project_throughputs: bool = field(
        default=True,
        metadata={"help": "estimate unseen GPU models from a seen one and the 1-GPU probes"},
    )
    share_max_replicas: bool = field(
        default=True, metadata={"help": "one GPU-count limit across GPU models"}
    )
    max_gpus: int = field(default=64, metadata={"help": "largest configuration in GPUs"})
    growth: float = field(
        default=2.0, metadata={"help": "a job may grow to this multiple of its largest run"}
    )
    pin_restarting: bool = field(
        default=True, metadata={"help": "keep jobs that are still restarting where they are"}
    )
    restart_penalty_s: float = field(
        default=30.0, metadata={"help": "restart cost S for jobs that state none"}
    )
    solver: str = field(
        default="auto",
        metadata={
            "help": "ILP solver: dp (exact dynamic program), highs, or auto "
            "(dp on small clusters such as sia-64, highs on large ones)"
        },
    )
    mip_rel_gap: float = field(default=1e-4, metadata={"help": "HiGHS's relative optimality gap"})
    heterogeneity_aware: bool = field(
        default=True,
        metadata={"help": "false: every GPU model looks like the first (Sia-unaware)"},
    )


@dataclass(frozen=True, slots=True)
class Configuration:
    """`gpus` GPUs of `model` on `nodes` nodes."""

    model: str
    nodes: int
    gpus: int


def build_configurations(
    models: Mapping[str, ModelInfo], max_nodes: Mapping[str, int], max_gpus: int
) -> list[Configuration]:
    """Sia's configuration set. Within a node: the powers of two that divide R (an R that
    is not a power of two acts as several virtual nodes); across nodes: whole nodes."""
    configs = []
    for model, info in models.items():
        per_node = info.gpus_per_node
        if per_node < 1:
            continue
        size = 1
        while size <= per_node and per_node % size == 0:
            configs.append(Configuration(model, 1, size))
            size *= 2
        if configs[-1].gpus != per_node:
            configs.append(Configuration(model, 1, per_node))
        node_cap = min(len(info.nodes), max_nodes.get(model, len(info.nodes)))
        for nodes in range(2, node_cap + 1):
            if nodes * per_node > max_gpus:
                break
            configs.append(Configuration(model, nodes, nodes * per_node))
    return configs


def restart_factor(age_s: float, restarts: int, penalty_s: float) -> float:
    """Pollux's re-allocation factor: the share of its life a job has not lost to
    restarts, counting the one a move would cost; 1 while the job is younger than S."""
    if age_s < penalty_s:
        return 1.0
    return max(age_s - restarts * penalty_s, 0.0) / (age_s + penalty_s)


def powered_utility(goodput: FloatArray, p: float, clip: float) -> FloatArray:
    powered = np.round(np.power(goodput, p), 2)
    return np.asarray(np.minimum(powered, clip), dtype=float)


class Sia(RoundPolicy):
    name = "sia"
    config_type = SiaConfig
    adapts_jobs: ClassVar[bool] = True
    """Jobs under Sia tune GPU count and batch size (hosts run them adaptive)."""
    defaults_follow = (
        "Sia's run_experiment.sh: p=-0.5, lambda_n=1.1, 60 s rounds, projected "
        "throughputs, shared max replicas"
    )

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        assert isinstance(self.config, SiaConfig)
        cfg = self.config
        if cfg.p == 0:
            raise ValueError("Sia's power p must not be 0")
        if (cfg.p < 0) != (cfg.lambda_unallocated > 0):
            raise ValueError("λ must be positive for p < 0 and negative for p > 0")
        check_solver(cfg.solver)  # at construction, not at the first round
        self.round_s = cfg.round_s
        self._rows: dict[str, tuple[object, tuple[Configuration, ...], FloatArray]] = {}

    @property
    def cfg(self) -> SiaConfig:
        assert isinstance(self.config, SiaConfig)
        return self.config

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        jobs = sorted(
            (*snapshot.running, *snapshot.pending), key=lambda j: (j.spec.submit_time, j.id)
        )
        if not jobs:
            return SchedulingResult()
        models = cluster_models(snapshot.cluster)
        held = held_jobs(snapshot)
        # Held jobs keep their GPUs; CPU-only jobs need none: neither enters the ILP (nor
        # does anyone on a cluster without GPUs).
        gpu_jobs = [j for j in jobs if j.spec.task.num_gpus and j.id not in held and models]
        hints = {job.id: _hints_of(job) for job in gpu_jobs}
        max_nodes = _max_nodes(models, hints.values())
        configs = build_configurations(models, max_nodes, self.cfg.max_gpus)
        adaptive = [j for j in gpu_jobs if _adaptive(j.spec, hints[j.id])]
        rigid = [j for j in gpu_jobs if not _adaptive(j.spec, hints[j.id])]
        model_names = list(models)
        capacity = free_capacity(snapshot.cluster, held.values(), models)
        allocation = self._solve(
            snapshot, adaptive, rigid, configs, models, model_names, hints, capacity
        )
        wanted: dict[str, tuple[str, tuple[int, ...]]] = {}
        for job, choice in zip(adaptive, allocation.adaptive, strict=True):
            if choice is not None:
                config = configs[choice]
                wanted[job.id] = (config.model, self._shape_of(config, models))
        for job, choice in zip(rigid, allocation.rigid, strict=True):
            if choice is not None:
                model = models[model_names[choice]]
                wanted[job.id] = (model.name, rigid_shape(job.spec, model))
        self._forget_gone(jobs)
        decisions = place_allocations(snapshot, wanted, models)
        notes = {
            "jobs": float(len(jobs)),
            "allocated": float(len(wanted)),
            "configs": float(len(configs)),
            "objective": allocation.objective,
        }
        return SchedulingResult(tuple(decisions), notes=notes)

    # -- utilities and the ILP ---------------------------------------------------------

    def _solve(
        self,
        snapshot: Snapshot,
        adaptive: Sequence[JobView],
        rigid: Sequence[JobView],
        configs: Sequence[Configuration],
        models: Mapping[str, ModelInfo],
        model_names: Sequence[str],
        hints: Mapping[str, GoodputHints | None],
        capacity: Mapping[str, int],
    ) -> Allocation:
        cfg = self.cfg
        config_key = tuple(configs)
        index_of = {c: i for i, c in enumerate(configs)}
        adaptive_cost = np.zeros((len(adaptive), len(configs)))
        pinned_a: dict[int, int] = {}
        for i, job in enumerate(adaptive):
            row = self._goodput_row(job, hints[job.id], config_key, models).copy()
            current = _current_config(job, index_of)
            self._apply_restart_factor(row, job, current, snapshot.now)
            adaptive_cost[i] = powered_utility(row, cfg.p, cfg.clip) - cfg.lambda_unallocated
            if current is not None and self._pinned(job, snapshot.now):
                pinned_a[i] = current
        rigid_cost = np.zeros((len(rigid), len(model_names)))
        pinned_r: dict[int, int] = {}
        for i, job in enumerate(rigid):
            row = self._rigid_row(job, models, model_names, snapshot.cluster)
            current_model = job.shape.gpu_model if job.shape is not None else None
            current = model_names.index(current_model) if current_model in models else None
            self._apply_restart_factor(row, job, current, snapshot.now)
            rigid_cost[i] = powered_utility(row, cfg.p, cfg.clip) - cfg.lambda_unallocated
            if current is not None and self._pinned(job, snapshot.now):
                pinned_r[i] = current
        return solve_allocation(
            adaptive_cost,
            [c.gpus for c in configs],
            [model_names.index(c.model) for c in configs],
            rigid_cost,
            [j.spec.gpus for j in rigid],
            [capacity[m] for m in model_names],
            pinned_a,
            pinned_r,
            minimise=cfg.p < 0,
            rel_gap=cfg.mip_rel_gap,
            solver=cfg.solver,
        )

    def _pinned(self, job: JobView, now: float) -> bool:
        return (
            self.cfg.pin_restarting and job.status is JobStatus.RUNNING and job.restart_until > now
        )

    def _apply_restart_factor(
        self, row: FloatArray, job: JobView, current: int | None, now: float
    ) -> None:
        if current is None:
            return  # a job without GPUs loses nothing by being moved
        penalty = _restart_penalty(job.spec, self.cfg.restart_penalty_s)
        factor = restart_factor(now - job.spec.submit_time, job.restarts, penalty)
        keep = row[current]
        row *= factor
        row[current] = keep
        np.maximum(row, self.cfg.epsilon, out=row)

    def _goodput_row(
        self,
        job: JobView,
        hints: GoodputHints | None,
        configs: tuple[Configuration, ...],
        models: Mapping[str, ModelInfo],
    ) -> FloatArray:
        """Normalised goodput over the configurations, cached until the job's hints or
        the configuration set change."""
        cached = self._rows.get(job.id)
        if cached is not None and cached[0] is hints and cached[1] == configs:
            return cached[2]
        assert hints is not None
        row = normalised_goodput(job.spec, hints, configs, models, self.cfg)
        self._rows[job.id] = (hints, configs, row)
        return row

    def _rigid_row(
        self,
        job: JobView,
        models: Mapping[str, ModelInfo],
        model_names: Sequence[str],
        cluster: ClusterState,
    ) -> FloatArray:
        """True throughput at the job's fixed size on each model, scaled so the slowest
        model is worth the job's GPU count; ε where the job cannot run."""
        spec = job.spec
        k = spec.gpus
        rates = np.zeros(len(model_names))
        fits = capacity_mask(spec, spec.task, cluster)
        for t, name in enumerate(model_names):
            info = models[name]
            if spec.allows(name) and k <= info.total_gpus and fits[list(info.nodes)].any():
                placement = rigid_shape(spec, info)
                shape = AllocationShape(
                    name,
                    k,
                    len(placement),
                    replicas=spec.replicas,
                    gpus_per_node=placement,
                    gpu_models=(name,),
                )
                rates[t] = spec.work.rate(shape, job.done)
        if not self.cfg.heterogeneity_aware:
            rates = np.where(rates > 0, 1.0, 0.0)
        positive = rates > 0
        if not positive.any():
            return np.full(len(model_names), self.cfg.epsilon)
        row = np.where(positive, rates * (k / rates[positive].min()), self.cfg.epsilon)
        return np.asarray(row, dtype=float)

    def _forget_gone(self, jobs: Sequence[JobView]) -> None:
        active = {j.id for j in jobs}
        for job_id in [k for k in self._rows if k not in active]:
            del self._rows[job_id]

    @staticmethod
    def _shape_of(config: Configuration, models: Mapping[str, ModelInfo]) -> tuple[int, ...]:
        per_node = models[config.model].gpus_per_node
        return packed_placement(config.gpus, min(per_node, config.gpus))


def normalised_goodput(
    spec: JobSpec,
    hints: GoodputHints,
    configs: Sequence[Configuration],
    models: Mapping[str, ModelInfo],
    cfg: SiaConfig,
) -> FloatArray:
    """Row of G before the restart factor: goodput per configuration over the row's
    smallest valid goodput (so the minimum is 1); ε where invalid."""
    eps = cfg.epsilon
    row = np.full(len(configs), eps)
    limits = _replica_limits(spec, hints, models, cfg)
    by_model: dict[str, list[int]] = {}
    for j, config in enumerate(configs):
        by_model.setdefault(config.model, []).append(j)
    seen = [m for m in models if hints.goodput_fn(m) is not None]
    if not cfg.heterogeneity_aware:
        seen = seen[:1]
    unknown: list[str] = []
    for model, columns in by_model.items():
        low, high = limits.get(model, (1, 0))
        valid = [
            j
            for j in columns
            if low <= configs[j].gpus <= high
            and configs[j].nodes <= hints.max_nodes.get(model, configs[j].nodes)
        ]
        source = model if model in seen else (seen[0] if seen and cfg.project_throughputs else None)
        if not valid or source is None or not spec.allows(model):
            unknown.append(model)
            continue
        row[valid] = _goodputs(hints, model, source, [configs[j] for j in valid], models, cfg)
    known = row[row > eps]
    row /= known.min() if known.size else 1.0
    for model in unknown:
        ones = [j for j in by_model[model] if configs[j].gpus == 1]
        low, _ = limits.get(model, (1, 0))
        if ones and low <= 1 and spec.allows(model) and model in hints.local_bsz_bounds:
            row[ones[0]] = 1.0
    return np.asarray(np.maximum(row, eps), dtype=float)


def _goodputs(
    hints: GoodputHints,
    model: str,
    source: str,
    configs: Sequence[Configuration],
    models: Mapping[str, ModelInfo],
    cfg: SiaConfig,
) -> FloatArray:
    """Batch-optimised goodput on `model`, from the job's model of `source` (scaled by
    the 1-GPU probe ratio when the two differ, as Sia's bootstrapping does)."""
    fn = hints.goodput_fn(source)
    assert fn is not None
    gpus = np.array([c.gpus for c in configs], dtype=float)
    if source == model:
        nodes = np.array([c.nodes for c in configs], dtype=float)
        ratio = 1.0
    else:
        nodes = np.ceil(gpus / models[source].gpus_per_node) if source in models else gpus
        probe = hints.probe_throughput
        ratio = probe.get(model, 0.0) / probe[source] if probe.get(source) else 0.0
        if not cfg.heterogeneity_aware:
            ratio = 1.0
    low, high = hints.local_bsz_bounds[source]
    goodput, _, _ = fn.optimize(
        nodes, gpus, hints.target_batch_size, (low, high), tune_batch=hints.tunes_batch
    )
    return np.asarray(goodput * ratio, dtype=float)


def _replica_limits(
    spec: JobSpec, hints: GoodputHints, models: Mapping[str, ModelInfo], cfg: SiaConfig
) -> dict[str, tuple[int, int]]:
    """GPU-count bounds per model: at most `growth`× the most GPUs the job has run on
    there (at least 1), `max_gpus`, what its largest batch can spread over and its
    elastic bounds."""
    low, top = (1, cfg.max_gpus) if spec.elastic is None else _bounds(spec.elastic)
    limits = {}
    for model in models:
        if model not in hints.local_bsz_bounds:
            continue
        min_local, _ = hints.local_bsz_bounds[model]
        grown = max(int(cfg.growth * hints.max_profiled_replicas.get(model, 0)), 1)
        limits[model] = min(grown, cfg.max_gpus, hints.max_batch_size // min_local)
    if hints.mode == SCALE_GPUS:
        limits = dict.fromkeys(limits, hints.target_replicas)
    elif cfg.share_max_replicas and limits:
        shared = max(limits.values())
        limits = dict.fromkeys(limits, shared)
    return {m: (max(low, 1), min(high, top)) for m, high in limits.items()}


def _bounds(elastic: Elasticity) -> tuple[int, int]:
    return elastic.min_replicas, elastic.max_replicas


def _hints_of(job: JobView) -> GoodputHints | None:
    return job.hints if isinstance(job.hints, GoodputHints) else None


def _adaptive(spec: JobSpec, hints: GoodputHints | None) -> bool:
    """Sia resizes a job only if it reports goodput hints, is elastic and runs one whole
    GPU per replica (Sia's configurations count GPUs)."""
    return (
        hints is not None
        and hints.mode != RIGID
        and spec.elastic is not None
        and spec.task.num_gpus == 1
        and spec.task.gpu_milli == MILLI
    )


def _max_nodes(
    models: Mapping[str, ModelInfo], hints: Iterable[GoodputHints | None]
) -> dict[str, int]:
    reach: dict[str, int] = {}
    for h in hints:
        if h is None:
            continue
        for model, nodes in h.max_nodes.items():
            reach[model] = max(reach.get(model, 0), nodes)
    return {m: reach.get(m, len(info.nodes)) for m, info in models.items()}


def rigid_shape(spec: JobSpec, info: ModelInfo) -> tuple[int, ...]:
    """GPUs per node of a rigid job packed on `info`'s nodes, whole tasks on each node."""
    width = max(spec.task.num_gpus, 1)  # a sharing task counts as one GPU
    per_node = packed_placement(spec.replicas, max(info.gpus_per_node // width, 1))
    return tuple(width * tasks for tasks in per_node)


def _restart_penalty(spec: JobSpec, default: float) -> float:
    value = spec.attributes.get("restart_penalty_s")
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return spec.restart_cost_s or default


def _current_config(job: JobView, index_of: Mapping[Configuration, int]) -> int | None:
    if job.status is not JobStatus.RUNNING or job.shape is None:
        return None
    shape = job.shape
    return index_of.get(Configuration(shape.gpu_model, shape.num_nodes, shape.num_gpus))
