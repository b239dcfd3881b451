"""RAP's co-run performance model (ASPLOS'24): the iteration time of a DLRM job per
preprocessing mode (`CoRunModel.iteration_ms`, the `policies.dlrm.IterationModel` the
simulator and the `rap` policy share), the overheads in `CoRunCosts`, and their
calibration against the paper's headline numbers.

Iteration time per mode, for GPU g with training time T_g = Σ_k s_k, unfused kernel time
U_g over n_g ops, fused time F_g in k_g kernels and spare capacity C_g = Σ_k c_k; the job
takes the slowest GPU (synchronous training):

| mode | T_iter |
|---|---|
| ideal | T_g |
| sequential | T_g + U_g + δ·n_g |
| naive co-run | T_g + α·(U_g + δ·n_g) |
| RAP | max((1 + ε)·T_g + overflow_g, δ·k_g) |
| CPU workers | max(T_g, ρ·U_g / cores_g) |
| remote GPU (whole job) | max(T, Σ_g F_g / share, δ·Σ_g k_g) |

δ is the per-kernel dispatch and hand-off overhead (paid serially by one-kernel-per-op
preprocessing, overlapped by a separate launching thread in the co-run modes, so fusion
cuts it twice: fewer kernels, and off the critical path); ε the co-run overhead; α the
interference of unplanned co-running; ρ CPU core-ms per GPU kernel-ms; overflow_g the
packed work beyond the last stage's capacity. docs/rap.md derives every default.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from policies.dlrm import DlrmProfile, GpuStages, Mode, PreprocessingWork
from policies.jobs import PartShape
from policies.rap_packing import fused_kernels, pack_stages

PAPER_GAP_BELOW_IDEAL = 0.0324
"""RAP's end-to-end throughput below ideal (ACM abstract): 3.24 %."""
PAPER_SPEEDUP_VS_SEQUENTIAL = 1.99
"""RAP's average speedup over sequential GPU preprocessing (ACM abstract)."""
PAPER_SPEEDUP_VS_CPU = 78.3
"""RAP's average speedup over TorchArrow CPU preprocessing (PNNL abstract)."""
PAPER_CPU_WORKERS_PER_GPU = 3
"""The artifact's CPU baseline runs 2–4 worker processes per GPU; the midpoint."""


@dataclass(frozen=True)
class CoRunCosts:
    """The overheads the kernel models leave out; docs/rap.md derives each default."""

    corun_overhead: float = field(
        default=0.0335,
        metadata={"help": "ε: RAP co-run slows training by this fraction (paper: 3.24 % gap)"},
    )
    dispatch_overhead_ms: float = field(
        default=0.145,
        metadata={"help": "δ: ms of dispatch and hand-off per preprocessing kernel launched"},
    )
    naive_interference: float = field(
        default=0.5,
        metadata={"help": "α in (0, 1]: share of preprocessing unplanned co-running exposes"},
    )
    cpu_core_ms_per_kernel_ms: float = field(
        default=1040.0,
        metadata={"help": "ρ: CPU core-ms doing the work of one ms of unfused GPU kernels"},
    )
    cpu_workers_per_gpu: int = field(
        default=PAPER_CPU_WORKERS_PER_GPU,
        metadata={"help": "CPU cores per training GPU when a CPU mode names none"},
    )
    host_slowdown: float = field(
        default=0.0335,
        metadata={"help": "ε_B: a remote preprocessing part slows each host job by this"},
    )

    def __post_init__(self) -> None:
        if not 0 < self.naive_interference <= 1:
            raise ValueError("naive_interference must be in (0, 1]")
        if min(self.corun_overhead, self.dispatch_overhead_ms, self.host_slowdown) < 0:
            raise ValueError("overheads must be >= 0")
        if self.host_slowdown >= 1:
            raise ValueError("host_slowdown must be below 1")
        if self.cpu_core_ms_per_kernel_ms <= 0 or self.cpu_workers_per_gpu < 1:
            raise ValueError("the CPU factor and worker count must be positive")


@dataclass(frozen=True)
class CoRunModel:
    """`policies.dlrm.IterationModel` with the formulas in this module's docstring."""

    costs: CoRunCosts = field(default_factory=CoRunCosts)

    def iteration_ms(self, profile: DlrmProfile, mode: Mode, part: PartShape | None) -> float:
        if mode is Mode.REMOTE_GPU:
            return self.remote_ms(profile, _gpu_share(part))
        cores = _cores(part, profile, self.costs.cpu_workers_per_gpu)
        return max(
            self.gpu_iteration_ms(stages, work, mode, cores)
            for stages, work in zip(profile.stages, profile.work, strict=True)
        )

    def gpu_iteration_ms(
        self, stages: GpuStages, work: PreprocessingWork, mode: Mode, cores_per_gpu: float
    ) -> float:
        """One training GPU's iteration time in a mode that keeps preprocessing local."""
        c = self.costs
        train = stages.train_ms
        one_by_one = work.unfused_ms + c.dispatch_overhead_ms * work.num_ops
        if mode is Mode.IDEAL:
            return train
        if mode is Mode.SEQUENTIAL:
            return train + one_by_one
        if mode is Mode.NAIVE:
            return train + c.naive_interference * one_by_one
        if mode is Mode.RAP:
            overflow = pack_stages(fused_kernels(work), stages).overflow_ms
            corun = (1.0 + c.corun_overhead) * train + overflow
            return max(corun, c.dispatch_overhead_ms * work.fused_kernels)
        if mode is Mode.CPU:
            return max(train, c.cpu_core_ms_per_kernel_ms * work.unfused_ms / cores_per_gpu)
        raise ValueError(f"mode {mode.value} is not local to the training GPUs")

    def remote_ms(self, profile: DlrmProfile, share: float) -> float:
        """The whole job's fused preprocessing on `share` of one other GPU, pipelined."""
        kernels = sum(w.fused_ms for w in profile.work)
        launches = sum(w.fused_kernels for w in profile.work)
        return max(profile.train_ms, kernels / share, self.costs.dispatch_overhead_ms * launches)

    def host_slowdown(self, profile: DlrmProfile, part: PartShape) -> float:
        return self.costs.host_slowdown

    def remote_milli_needed(self, profile: DlrmProfile) -> float:
        """The GPU share (milli) at which remote preprocessing keeps up with training."""
        return 1000.0 * sum(w.fused_ms for w in profile.work) / profile.train_ms

    def cpu_cores_needed(self, profile: DlrmProfile) -> float:
        """CPU cores (whole job) at which CPU preprocessing keeps up with training."""
        per_gpu = max(
            self.costs.cpu_core_ms_per_kernel_ms * w.unfused_ms / s.train_ms
            for s, w in zip(profile.stages, profile.work, strict=True)
        )
        return per_gpu * profile.num_gpus


def _gpu_share(part: PartShape | None) -> float:
    if part is None or part.gpu_milli <= 0:
        raise ValueError("remote-GPU preprocessing needs a part with milli-GPU")
    return part.gpu_milli / 1000.0


def _cores(part: PartShape | None, profile: DlrmProfile, default_per_gpu: int) -> float:
    if part is None:
        return float(default_per_gpu)
    if part.cpu_milli <= 0:
        raise ValueError("CPU preprocessing needs a part with CPU")
    return part.cpu_milli / 1000.0 / profile.num_gpus


# -- calibration --------------------------------------------------------------------------


def corun_overhead_for_gap(gap_below_ideal: float = PAPER_GAP_BELOW_IDEAL) -> float:
    """ε such that throughput 1/((1+ε)T) is `gap` below ideal 1/T: 1/(1 − gap) − 1."""
    return 1.0 / (1.0 - gap_below_ideal) - 1.0


def calibrate_dispatch_overhead(
    profiles: Sequence[DlrmProfile],
    speedup: float = PAPER_SPEEDUP_VS_SEQUENTIAL,
    costs: CoRunCosts | None = None,
) -> float:
    """δ that gives each profile `speedup` of sequential over RAP, median over profiles.

    Per profile, sequential = max_g (T_g + U_g + δ·n_g) reaches speedup·RAP first on
    the GPU with the smallest (speedup·RAP − T_g − U_g)/n_g. RAP is taken at δ = 0
    (its δ term only matters when launching is slower than training).
    """
    model = CoRunModel(replace(costs or CoRunCosts(), dispatch_overhead_ms=0.0))
    implied = []
    for profile in profiles:
        target = speedup * model.iteration_ms(profile, Mode.RAP, None)
        implied.append(
            min(
                (target - s.train_ms - w.unfused_ms) / w.num_ops
                for s, w in zip(profile.stages, profile.work, strict=True)
            )
        )
    return statistics.median(implied)


def calibrate_cpu_factor(
    profiles: Sequence[DlrmProfile],
    speedup: float = PAPER_SPEEDUP_VS_CPU,
    workers_per_gpu: int = PAPER_CPU_WORKERS_PER_GPU,
    costs: CoRunCosts | None = None,
) -> float:
    """ρ that makes CPU workers `speedup` times slower than RAP, median over profiles:
    per profile ρ = speedup·RAP·workers / max_g U_g."""
    model = CoRunModel(costs or CoRunCosts())
    implied = [
        speedup
        * model.iteration_ms(profile, Mode.RAP, None)
        * workers_per_gpu
        / max(w.unfused_ms for w in profile.work)
        for profile in profiles
    ]
    return statistics.median(implied)
