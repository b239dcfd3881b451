"""Adaptive (elastic) training jobs: the work model and the job's own tuning loop.

`AdaptiveTraining` is the immutable work model of a job that trains an application for
its profiled number of epochs. Its `rate` is the true progress rate on an allocation at
the batch the job would use without tuning, which is what rigid runs (Gavel, FIFO, LAS on
TunedJobs) get.

`TrainingAgent` is one run's mutable companion, standing in for the AdaptDL client inside
the job: at every (re)allocation, round and epoch boundary it picks its batch size from
its own fitted goodput model, observes the true step time of what it runs (refitting the
throughput model when a configuration is new), and reports `GoodputHints` to the
scheduler. Hosts create one agent per run (`work.agent()`), so runs never share state.

Job modes: `adaptive` (GPU count, GPU model and batch size may change), `scale-gpus`
(strong scaling: the batch stays at the TunedJobs value, GPUs may change) and `rigid`
(TunedJobs GPUs and batch).

How a job fits its throughput model: `adaptdl` (default) as AdaptDL's client and the jobs
of Sia's simulator do, refitting from Pollux's start on every new observation; `exact`
finds the minimum of the same loss, warm-started, skipping refits the model already
explains. Sia decides on these models, so the fit shapes its allocations
(docs/heterogeneity.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from policies.goodput import (
    TINY,
    GoodputFunction,
    GradParams,
    PerfParams,
    StepObservation,
    compute_time,
    fit_perf_params,
    fit_perf_params_as_adaptdl,
    network_time,
    step_time,
)
from policies.jobs import AllocationShape
from policies.perf_models import (
    AppProfile,
    BatchConfig,
    cap_batch,
    packed_placement,
    progress_rate,
    split_batch,
)

ADAPTIVE = "adaptive"
SCALE_GPUS = "scale-gpus"
RIGID = "rigid"
MODES = (ADAPTIVE, SCALE_GPUS, RIGID)
ADAPTDL_FIT = "adaptdl"
EXACT_FIT = "exact"
FITS = (ADAPTDL_FIT, EXACT_FIT)


@dataclass(frozen=True)
class GoodputHints:
    """What an adaptive job tells the scheduler about itself, per GPU model where it
    differs. Everything a goodput-based policy needs, and nothing of the ground truth
    beyond the 1-GPU probe taken at submission."""

    mode: str
    init_batch_size: int
    max_batch_size: int
    target_batch_size: int
    target_replicas: int
    local_bsz_bounds: Mapping[str, tuple[int, int]]
    probe_throughput: Mapping[str, float]
    """Samples/s on one GPU of each model at the largest batch that fits (profiled at
    submission; Sia's bootstrapping)."""
    max_nodes: Mapping[str, int]
    """Largest node count the job's throughput can be modelled for on each GPU model."""
    grad: GradParams | None = None
    perf: Mapping[str, PerfParams] = field(default_factory=dict)
    max_profiled_replicas: Mapping[str, int] = field(default_factory=dict)

    @property
    def tunes_batch(self) -> bool:
        return self.mode == ADAPTIVE

    def goodput_fn(self, gpu_model: str) -> GoodputFunction | None:
        """The job's fitted goodput model on `gpu_model`, once it has run there."""
        perf = self.perf.get(gpu_model)
        if perf is None or self.grad is None:
            return None
        return GoodputFunction(perf, self.grad, self.init_batch_size)


@dataclass(frozen=True, eq=False)
class AdaptiveTraining:
    """Train `profile` to its last epoch; TunedJobs asked for `target_replicas` GPUs and a
    global batch of `target_batch_size`."""

    profile: AppProfile
    target_replicas: int
    target_batch_size: int
    mode: str = ADAPTIVE
    fit: str = ADAPTDL_FIT
    """How the job fits its throughput model (`FITS`)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"job mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.fit not in FITS:
            raise ValueError(f"model fit {self.fit!r} is not one of {', '.join(FITS)}")
        if self.target_replicas < 1 or self.target_batch_size < 1:
            raise ValueError("TunedJobs GPUs and batch size must be positive")

    @property
    def total(self) -> float:
        return self.profile.epochs.total

    def rate(self, shape: AllocationShape, done: float) -> float:
        """True progress rate at the untuned batch: the TunedJobs batch for rigid and
        strong-scaling jobs, the smallest batch that fits for adaptive ones."""
        placement = placement_of(shape)
        batch = self.untuned_batch(shape.gpu_model, placement)
        return self._true_rate(shape, placement, batch, done)

    def next_change(self, done: float) -> float | None:
        """Progress at which the rate next changes (the end of the current epoch)."""
        return self.profile.epochs.next_boundary(done)

    def agent(self) -> TrainingAgent:
        return TrainingAgent(self)

    def untuned_batch(self, gpu_model: str, placement: tuple[int, ...]) -> BatchConfig:
        replicas = sum(placement)
        if self.mode == ADAPTIVE:
            low, _ = self.profile.local_bsz_bounds(gpu_model)
            batch = max(self.profile.epochs.init_batch_size, low * replicas)
        else:
            batch = self.target_batch_size
        return split_batch(self.profile, gpu_model, placement, batch)

    def static_hints(self) -> GoodputHints:
        tables = self.profile.tables
        return GoodputHints(
            mode=self.mode,
            init_batch_size=self.profile.epochs.init_batch_size,
            max_batch_size=self.profile.epochs.max_batch_size,
            target_batch_size=self.target_batch_size,
            target_replicas=self.target_replicas,
            local_bsz_bounds={m: self.profile.local_bsz_bounds(m) for m in tables},
            probe_throughput={m: t.probe_throughput for m, t in tables.items()},
            max_nodes={m: t.max_nodes for m, t in tables.items()},
        )

    def _true_rate(
        self, shape: AllocationShape, placement: tuple[int, ...], batch: BatchConfig, done: float
    ) -> float:
        # A job straddling GPU models runs at the pace of its slowest GPUs.
        epoch = self.profile.epochs.epoch_of(done)
        models = shape.gpu_models or (shape.gpu_model,)
        return min(progress_rate(self.profile, m, placement, batch, epoch) for m in models)


REFIT_TOLERANCE = 0.02
"""Under the exact fit, an observation at an already-seen GPU count that the fitted model
predicts within 2% (step and compute time) is kept without refitting."""


def _predicts(perf: PerfParams, key: tuple[int, int, int], step: float, sync: float) -> bool:
    nodes, replicas, atomic = key
    comp = compute_time(perf, atomic)
    predicted = step_time(perf, comp, network_time(perf, nodes, replicas))
    observed_comp = max(step - sync, TINY)
    return bool(
        abs(float(predicted[()]) / step - 1) <= REFIT_TOLERANCE
        and abs(float(comp[()]) / observed_comp - 1) <= REFIT_TOLERANCE
    )


def placement_of(shape: AllocationShape) -> tuple[int, ...]:
    if shape.gpus_per_node:
        return tuple(shape.gpus_per_node)
    per_node = math.ceil(shape.num_gpus / max(shape.num_nodes, 1))
    return packed_placement(shape.num_gpus, per_node)


class TrainingAgent:
    """One run of an `AdaptiveTraining` job: batch tuning and throughput-model learning."""

    def __init__(self, work: AdaptiveTraining) -> None:
        self.work = work
        self._observed: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = {}
        self._perf: dict[str, PerfParams] = {}
        self._grad: GradParams | None = None
        self._static = work.static_hints()
        self._hints: GoodputHints | None = None
        self.batch: BatchConfig | None = None
        """The batch configuration of the last `rate` call."""
        self._last_choice: tuple[tuple[object, ...], BatchConfig] | None = None

    def rate(self, shape: AllocationShape, done: float) -> float:
        """Pick the batch for this allocation, observe the true step time there (learning
        from it) and return the true progress rate."""
        work = self.work
        placement = placement_of(shape)
        epoch = work.profile.epochs.epoch_of(done)
        batch = self._choose_batch(shape.gpu_model, placement)
        self.batch = batch
        if work.mode != RIGID:  # a rigid job has nothing to tune, so it models nothing
            self._observe(shape.gpu_model, placement, batch)
        sqr, var = work.profile.epochs.grad_stats(batch.global_batch(sum(placement)), epoch)
        self._set_grad(GradParams(sqr, var))
        return work._true_rate(shape, placement, batch, done)

    def next_change(self, done: float) -> float | None:
        return self.work.next_change(done)

    def hints(self) -> GoodputHints:
        if self._hints is None:
            static = self._static
            self._hints = GoodputHints(
                mode=static.mode,
                init_batch_size=static.init_batch_size,
                max_batch_size=static.max_batch_size,
                target_batch_size=static.target_batch_size,
                target_replicas=static.target_replicas,
                local_bsz_bounds=static.local_bsz_bounds,
                probe_throughput=static.probe_throughput,
                max_nodes=static.max_nodes,
                grad=self._grad,
                perf=dict(self._perf),
                max_profiled_replicas={
                    m: max(key[1] for key in obs) for m, obs in self._observed.items() if obs
                },
            )
        return self._hints

    def _choose_batch(self, gpu_model: str, placement: tuple[int, ...]) -> BatchConfig:
        work = self.work
        perf = self._perf.get(gpu_model)
        if work.mode != ADAPTIVE or perf is None or self._grad is None:
            return work.untuned_batch(gpu_model, placement)
        key = (gpu_model, placement, perf, self._grad)
        if self._last_choice is not None and self._last_choice[0] == key:
            return self._last_choice[1]  # nothing it decides on has changed
        choice = self._tuned_batch(gpu_model, placement, perf, self._grad)
        self._last_choice = (key, choice)
        return choice

    def _tuned_batch(
        self, gpu_model: str, placement: tuple[int, ...], perf: PerfParams, grad: GradParams
    ) -> BatchConfig:
        work = self.work
        profile = work.profile
        low, _ = profile.local_bsz_bounds(gpu_model)
        high = profile.table(gpu_model).max_local_on(placement)
        fn = GoodputFunction(perf, grad, profile.epochs.init_batch_size)
        replicas = sum(placement)
        choice = fn.best_batch(len(placement), replicas, profile.epochs.max_batch_size, (low, high))
        if choice.goodput <= 0:
            return work.untuned_batch(gpu_model, placement)
        return cap_batch(profile, gpu_model, replicas, choice.atomic_bsz, choice.accum_steps)

    def _observe(self, gpu_model: str, placement: tuple[int, ...], batch: BatchConfig) -> None:
        key = (len(placement), sum(placement), batch.atomic_bsz)
        observed = self._observed.setdefault(gpu_model, {})
        if key in observed:
            return
        table = self.work.profile.table(gpu_model)
        step, sync = table.step_sync(placement, batch.atomic_bsz)
        seen_size = any(k[:2] == key[:2] for k in observed)
        observed[key] = (step, sync)
        rows = [StepObservation(n, k, m, s, y) for (n, k, m), (s, y) in observed.items()]
        perf = self._perf.get(gpu_model)
        if self.work.fit == ADAPTDL_FIT:
            self._perf[gpu_model] = fit_perf_params_as_adaptdl(rows)
        elif perf is not None and seen_size and _predicts(perf, key, step, sync):
            return  # the model already explains this point: a refit would not move it
        else:
            self._perf[gpu_model] = fit_perf_params(rows, start=perf)
        self._hints = None

    def _set_grad(self, grad: GradParams) -> None:
        if grad != self._grad:
            self._grad = grad
            self._hints = None
