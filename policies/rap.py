"""RAP (ASPLOS'24): co-running DLRM input preprocessing with training, and where to put it.

Two halves, both pure:

* **The co-run model** — the stage-packing plan (`pack_stages`, the artifact's greedy
  scheduler) and the iteration time of a DLRM job per preprocessing mode
  (`CoRunModel.iteration_ms`), with the overheads in `CoRunCosts`.
* **The sharing policy** (`RapSharing`, registered as `rap`) — decides per DLRM job
  whether its preprocessing runs on its own GPUs (RAP), on spare milli-GPU of other
  jobs' GPUs (cross-job sharing, slowing those hosts) or on a CPU node.

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

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from policies.dlrm import (
    STAGES,
    DlrmProfile,
    GpuStages,
    Mode,
    PreprocessingWork,
)
from policies.jobs import PartShape

PAPER_GAP_BELOW_IDEAL = 0.0324
"""RAP's end-to-end throughput below ideal (ACM abstract): 3.24 %."""
PAPER_SPEEDUP_VS_SEQUENTIAL = 1.99
"""RAP's average speedup over sequential GPU preprocessing (ACM abstract)."""
PAPER_SPEEDUP_VS_CPU = 78.3
"""RAP's average speedup over TorchArrow CPU preprocessing (PNNL abstract)."""
PAPER_CPU_WORKERS_PER_GPU = 3
"""The artifact's CPU baseline runs 2–4 worker processes per GPU; the midpoint."""


# -- stage packing --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kernel:
    """A (fused) preprocessing kernel: its standalone latency and how many ops it fuses."""

    latency_ms: float
    ops: int = 1

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.ops < 1:
            raise ValueError("a kernel needs latency >= 0 and at least one op")

    def shard(self, ops: int) -> tuple[Kernel, Kernel]:
        """The first `ops` ops and the rest, latency shared per op (linear)."""
        per_op = self.latency_ms / self.ops
        return Kernel(per_op * ops, ops), Kernel(per_op * (self.ops - ops), self.ops - ops)


@dataclass(frozen=True, slots=True)
class CoRunPlan:
    """Which kernels co-run in which stage (STAGES order) and the time by which the
    last stage overruns its capacity (the only part that slows training)."""

    stages: tuple[tuple[Kernel, ...], ...]
    chosen: tuple[int, ...]
    """Stage indices picked by intensity, in the order they were picked."""
    overflow_ms: float

    def load_ms(self, stage: int) -> float:
        return sum(k.latency_ms for k in self.stages[stage])


def stages_to_fill(gpu: GpuStages, work_ms: float) -> tuple[int, ...]:
    """Stages by descending intensity κ (execution order on ties) until their capacity
    covers `work_ms`; at least one stage, all of them if even that is short."""
    intensity = gpu.intensity()
    order = sorted(range(len(STAGES)), key=lambda k: -intensity[k])
    chosen: list[int] = []
    covered = 0.0
    for stage in order:
        chosen.append(stage)
        covered += gpu.capacity_ms[stage]
        if covered >= work_ms:
            break
    return tuple(chosen)


def pack_stages(kernels: Sequence[Kernel], gpu: GpuStages) -> CoRunPlan:
    """The artifact's greedy co-run schedule for one GPU.

    Walk the chosen stages in execution order and fill each with whole kernels while
    they fit; a kernel that does not fit is split at op granularity (the largest head
    that fits goes in, the rest waits for the next stage) and the walk moves on.
    Whatever is left goes to the last stage.
    """
    total = sum(k.latency_ms for k in kernels)
    chosen = stages_to_fill(gpu, total)
    queue = deque(kernels)
    placed: list[list[Kernel]] = [[] for _ in STAGES]
    for stage in sorted(chosen):
        _fill_stage(queue, placed[stage], gpu.capacity_ms[stage])
    last = len(STAGES) - 1
    placed[last].extend(queue)
    overflow = max(0.0, sum(k.latency_ms for k in placed[last]) - gpu.capacity_ms[last])
    return CoRunPlan(tuple(tuple(p) for p in placed), chosen, overflow)


def _fill_stage(queue: deque[Kernel], placed: list[Kernel], capacity_ms: float) -> None:
    room = capacity_ms
    while queue:
        kernel = queue[0]
        if kernel.latency_ms <= room:
            placed.append(queue.popleft())
            room -= kernel.latency_ms
            continue
        head_ops = _ops_that_fit(kernel, room)
        if head_ops:
            head, rest = kernel.shard(head_ops)
            placed.append(head)
            queue[0] = rest
        return


def _ops_that_fit(kernel: Kernel, room_ms: float) -> int:
    if kernel.ops < 2 or kernel.latency_ms <= 0:
        return 0
    fits = math.floor(room_ms * kernel.ops / kernel.latency_ms + 1e-9)
    return max(0, min(kernel.ops - 1, fits))


def fused_kernels(work: PreprocessingWork) -> tuple[Kernel, ...]:
    """The GPU's fused kernels. The data gives only their count and summed latency, so
    each gets an equal share of the latency and of the ops (remainder to the first)."""
    count = work.fused_kernels
    base, extra = divmod(work.num_ops, count)
    return tuple(
        Kernel(work.fused_ms / count, base + (1 if i < extra else 0)) for i in range(count)
    )


# -- iteration time per mode ------------------------------------------------------------------


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
