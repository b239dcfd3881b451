"""The DLRM job kind: a training part plus a preprocessing part (RAP, ASPLOS'24).

Training runs on N GPUs; each iteration walks five stages in order (`STAGES`), and on
every GPU each stage leaves some spare capacity that preprocessing kernels can use
without slowing it. The preprocessing part is, per training GPU, a number of column ops
with their one-kernel-per-op time (`unfused_ms`) and their time after RAP's horizontal
fusion (`fused_ms`, in `fused_kernels` kernels).

Where the preprocessing runs is a *mode* chosen by the scheduler; how long an iteration
takes in each mode is an `IterationModel` (implemented by `policies.rap_model.CoRunModel`).
`DlrmWork` ties the two into the simulator's ground truth, so the work model and the
sharing policy use one set of formulas.

Profiles are value objects: `traces.rap` reads them from the public data; everything
here is pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from policies.jobs import AllocationShape, PartShape

STAGES: tuple[str, ...] = ("emb_fwd", "mlp_fwd", "mlp_bwd", "emb_bwd", "grad_comm")
"""Training stages in execution order."""
DLRM_KIND = "dlrm"
"""`JobSpec.kind` of DLRM jobs."""
PREPROCESS_PART = "preprocess"
"""`TaskPlacement.part` of a DLRM job's preprocessing placed apart from its GPUs."""
BASE_BATCH = 4096
"""Batch at which the kernel-latency models (and the stage profiles) were measured."""
NGRAM_BATCH_SCALING = (0.92, 0.33)
"""(w0, w1) of the artifact's batch rule latency·(w0·r + w1), ngram coefficients, the
reference's default for ops without their own."""


class Mode(StrEnum):
    """Where a DLRM job's preprocessing runs."""

    IDEAL = "ideal"
    """Preprocessing is free (the paper's upper bound)."""
    CPU = "cpu"
    """CPU workers on some node, pipelined with training."""
    SEQUENTIAL = "sequential"
    """On the job's own GPUs, one kernel per op, between training iterations."""
    NAIVE = "naive_corun"
    """On the job's own GPUs, concurrently through CUDA streams or MPS, unplanned."""
    RAP = "rap"
    """On the job's own GPUs, fused and packed into the stages' spare capacity."""
    REMOTE_GPU = "remote_gpu"
    """Fused kernels on a fraction of another GPU (cross-job sharing)."""


@dataclass(frozen=True, slots=True)
class GpuStages:
    """One training GPU: each stage's standalone latency and the preprocessing time that
    can co-run in it without slowing it, both in ms, in `STAGES` order."""

    stage_ms: tuple[float, ...]
    capacity_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.stage_ms) != len(STAGES) or len(self.capacity_ms) != len(STAGES):
            raise ValueError(f"a GPU profile needs one value per stage ({len(STAGES)})")
        if min(self.stage_ms) <= 0 or min(self.capacity_ms) < 0:
            raise ValueError("stage latencies must be positive and capacities >= 0")

    @property
    def train_ms(self) -> float:
        return sum(self.stage_ms)

    @property
    def capacity_total_ms(self) -> float:
        return sum(self.capacity_ms)

    def intensity(self) -> tuple[float, ...]:
        """κ_k = capacity_k / stage_k, the share of a stage that preprocessing can fill."""
        return tuple(c / s for c, s in zip(self.capacity_ms, self.stage_ms, strict=True))


@dataclass(frozen=True, slots=True)
class PreprocessingWork:
    """One training GPU's preprocessing per iteration."""

    num_ops: int
    unfused_ms: float
    fused_ms: float
    fused_kernels: int

    def __post_init__(self) -> None:
        if self.num_ops < 1 or not 1 <= self.fused_kernels <= self.num_ops:
            raise ValueError("need >= 1 op and between 1 and num_ops fused kernels")
        if self.unfused_ms < 0 or self.fused_ms < 0:
            raise ValueError("preprocessing times must be >= 0")

    def replicated(self, copies: int) -> PreprocessingWork:
        """The same work for `copies` times the features (kernel list repeated)."""
        return PreprocessingWork(
            self.num_ops * copies,
            self.unfused_ms * copies,
            self.fused_ms * copies,
            self.fused_kernels * copies,
        )

    def kernel_times_scaled(self, factor: float) -> PreprocessingWork:
        return replace(self, unfused_ms=self.unfused_ms * factor, fused_ms=self.fused_ms * factor)


@dataclass(frozen=True, slots=True)
class DlrmProfile:
    """A DLRM training configuration: plan, batch and one entry per training GPU."""

    plan: int
    batch: int
    stages: tuple[GpuStages, ...]
    work: tuple[PreprocessingWork, ...]
    gpu_model: str = "A100"
    extrapolated: bool = False
    """True when the preprocessing work is not measured but extrapolated (plans 2, 3)."""

    def __post_init__(self) -> None:
        if not self.stages or len(self.stages) != len(self.work):
            raise ValueError("a DLRM profile needs stages and work for each of its GPUs")
        if self.batch < 1:
            raise ValueError("batch must be positive")

    @property
    def num_gpus(self) -> int:
        return len(self.stages)

    @property
    def train_ms(self) -> float:
        """T_train: the synchronous step waits for the slowest GPU."""
        return max(g.train_ms for g in self.stages)

    def at_batch(
        self, batch: int, scaling: tuple[float, float] = NGRAM_BATCH_SCALING
    ) -> DlrmProfile:
        """This profile's preprocessing rescaled to another batch by the artifact's rule,
        relative to this profile's batch (so the same batch gives factor 1). Stage
        latencies and capacities stay, as in the artifact, which keeps them per plan."""
        factor = batch_factor(batch, scaling) / batch_factor(self.batch, scaling)
        work = tuple(w.kernel_times_scaled(factor) for w in self.work)
        return replace(self, batch=batch, work=work)


def batch_factor(batch: int, scaling: tuple[float, float] = NGRAM_BATCH_SCALING) -> float:
    """w0·r + w1 with r = batch / 4096 (the artifact's per-op batch scaling)."""
    w0, w1 = scaling
    return w0 * batch / BASE_BATCH + w1


class IterationModel(Protocol):
    """How long one training iteration takes with the preprocessing in a given mode."""

    def iteration_ms(self, profile: DlrmProfile, mode: Mode, part: PartShape | None) -> float:
        """ms per iteration; `part` is the preprocessing part for CPU and remote-GPU modes
        (its cores or its milli-GPU)."""
        ...

    def host_slowdown(self, profile: DlrmProfile, part: PartShape) -> float:
        """Fraction of speed that jobs sharing a GPU with this remote part lose."""
        ...


def mode_of(shape: AllocationShape, default: Mode = Mode.RAP) -> tuple[Mode, PartShape | None]:
    """The preprocessing mode a placement asks for, and its part if placed apart."""
    part = next((p for p in shape.parts if p.name == PREPROCESS_PART), None)
    if part is not None:
        return (Mode.REMOTE_GPU if part.gpu_milli else Mode.CPU), part
    return (Mode(shape.mode) if shape.mode else default), None


@dataclass(frozen=True, slots=True)
class DlrmWork:
    """`iterations` training iterations of `profile`, timed by `timing`.

    The rate is iterations per second; a GPU model other than the profile's runs at
    `gpu_speed[model]` times the profile's speed (1.0 when not listed), everything
    scaled alike. A placement that names no mode runs in `default_mode`.
    """

    iterations: float
    profile: DlrmProfile
    timing: IterationModel
    default_mode: Mode = Mode.RAP
    gpu_speed: Mapping[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.iterations

    def rate(self, shape: AllocationShape, done: float) -> float:
        mode, part = mode_of(shape, self.default_mode)
        speed = self.gpu_speed.get(shape.gpu_model, 1.0)
        return 1000.0 * speed / self.timing.iteration_ms(self.profile, mode, part)

    def iteration_ms(self, mode: Mode, part: PartShape | None = None) -> float:
        return self.timing.iteration_ms(self.profile, mode, part)

    def ideal_rate(self) -> float:
        """Iterations per second with free preprocessing, on the profile's GPU."""
        return 1000.0 / self.iteration_ms(Mode.IDEAL)

    def host_slowdown(self, part: PartShape) -> float:
        if part.name != PREPROCESS_PART or not part.gpu_milli:
            return 0.0
        return self.timing.host_slowdown(self.profile, part)


def replicate_profile(
    source: DlrmProfile, plan: int, stages: Sequence[GpuStages], copies: int
) -> DlrmProfile:
    """Extrapolate `plan`, which has stage data but no op data: `source`'s work repeated
    `copies` times on `plan`'s stages (plans 2 and 3 have 2× and 4× plan 0's features)."""
    if len(stages) != source.num_gpus:
        raise ValueError("stage profile and work profile disagree on the GPU count")
    return replace(
        source,
        plan=plan,
        stages=tuple(stages),
        work=tuple(w.replicated(copies) for w in source.work),
        extrapolated=True,
    )
