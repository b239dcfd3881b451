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
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from policies.base import Context, PlacementConfig, PlacementPolicy, PolicyConfig, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.decisions import Decision, Place, SchedulingResult
from policies.dlrm import (
    DLRM_KIND,
    PREPROCESS_PART,
    STAGES,
    DlrmProfile,
    DlrmWork,
    GpuStages,
    Mode,
    PreprocessingWork,
)
from policies.fragmentation import (
    DEFAULT_COVERAGE,
    NodeFragmentation,
    TargetWorkload,
    live_workload,
    workload_from_jobs,
)
from policies.jobs import JobSpec, JobView, PartShape, Placement, TaskPlacement, TaskRequest
from policies.placement import feasible_mask, feasible_nodes, take
from policies.registry import make_policy

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


# -- the sharing policy -------------------------------------------------------------------

SHARING = ("none", "own", "cross_job")
OFFLOAD_RULES = ("gain", "always")
FALLBACKS = (Mode.RAP.value, Mode.SEQUENTIAL.value)
NEAR_TIE_MILLI = 1e-9
"""Fragmentation changes this close count as equal."""


@dataclass(frozen=True)
class RapSharingConfig(PlacementConfig):
    sharing: str = field(
        default="cross_job",
        metadata={
            "help": "none: sequential on own GPUs; own: RAP on own GPUs; cross_job: also "
            "other jobs' spare milli-GPU and CPU nodes"
        },
    )
    base: str = field(
        default="bestfit", metadata={"help": "placement policy for every job's own tasks"}
    )
    offload: str = field(
        default="gain",
        metadata={
            "help": "gain: offload only when the predicted net gain is positive; always: "
            "whenever a spare place exists"
        },
    )
    fallback: str = field(
        default="rap",
        metadata={
            "help": "cross_job: how preprocessing runs when it stays on the job's GPUs "
            "(rap, or sequential where co-running there is not possible)"
        },
    )
    max_guest_milli: int = field(
        default=500, metadata={"help": "largest GPU share a remote preprocessing part takes"}
    )
    milli_step: int = field(default=50, metadata={"help": "remote shares are multiples of this"})
    guest_cpu_milli: int = field(
        default=1000, metadata={"help": "CPU of a remote part (its launching thread)"}
    )
    guest_mem_mib: int = field(default=4096, metadata={"help": "memory of a remote part"})
    cpu_mem_mib_per_core: int = field(
        default=1024, metadata={"help": "memory per core of a CPU-node part"}
    )
    idle_gpus: bool = field(
        default=False,
        metadata={
            "help": "remote parts may also take a fully idle GPU (default: only GPUs other "
            "jobs already share)"
        },
    )
    coverage: float = field(
        default=DEFAULT_COVERAGE,
        metadata={"help": "share of tasks FGD's target workload covers (fragmentation)"},
    )

    def __post_init__(self) -> None:
        if self.sharing not in SHARING:
            raise ValueError(f"rap sharing must be one of {', '.join(SHARING)}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"rap fallback must be one of {', '.join(FALLBACKS)}")
        if self.offload not in OFFLOAD_RULES:
            raise ValueError(f"rap offload must be one of {', '.join(OFFLOAD_RULES)}")
        if not 0 < self.milli_step <= self.max_guest_milli < MILLI:
            raise ValueError("rap needs 0 < milli_step <= max_guest_milli < 1000")


@dataclass(frozen=True, slots=True)
class Offload:
    """One way to run a DLRM job's preprocessing, with its predicted net gain in
    GPU-equivalents of throughput: the job's N GPUs speed up by own/t − 1, each host
    job loses its GPUs × slowdown."""

    mode: Mode
    gain: float
    part: TaskPlacement | None = None
    where: str = "own GPUs"


class HostIndex:
    """Which jobs' own tasks sit on each GPU, with their size in GPUs (a slowdown on
    any one GPU slows the whole synchronous job)."""

    def __init__(self) -> None:
        self._jobs: defaultdict[tuple[str, int], dict[str, float]] = defaultdict(dict)

    def add(self, job_id: str, placement: Placement) -> None:
        weight = sum(len(t.gpus) * t.gpu_milli for t in placement.replica_tasks) / MILLI
        for task in placement.replica_tasks:
            for gpu in task.gpus:
                self._jobs[(task.node, gpu)][job_id] = weight

    def gpus_slowed(self, node: str, gpu: int) -> float:
        """Summed size, in GPUs, of the jobs a part on this GPU would slow."""
        return sum(self._jobs.get((node, gpu), {}).values())

    @classmethod
    def of_running(cls, running: Sequence[JobView]) -> HostIndex:
        index = cls()
        for view in running:
            if view.placement is not None:
                index.add(view.id, view.placement)
        return index


class RapSharing(PlacementPolicy):
    """RAP sharing: DLRM preprocessing on own GPUs, other jobs' spare milli-GPU or CPU.

    Every job's own tasks are placed by the `base` policy. Then, for each DLRM job placed
    in the pass, the policy picks where its preprocessing runs: `none` keeps it
    sequential on the job's GPUs, `own` co-runs it there (RAP), `cross_job` also weighs
    a share of a GPU other jobs already use (the one whose take least raises FGD's
    fragmentation, then the one slowing the fewest host GPUs) and a CPU-only node, by
    predicted net gain.
    Remote parts take only free milli-GPU, after every job of the pass is placed.
    """

    name = "rap"
    config_type: ClassVar[type[PolicyConfig]] = RapSharingConfig

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        base = make_policy(self.settings.base, {"blocking": self.settings.blocking})
        if not isinstance(base, PlacementPolicy) or isinstance(base, RapSharing):
            raise ValueError(f"rap base {self.settings.base!r} must be a placement policy")
        self.base = base
        self._prepared: TargetWorkload | None = None
        self._fragmentation: NodeFragmentation | None = None

    @property
    def settings(self) -> RapSharingConfig:
        assert isinstance(self.config, RapSharingConfig)
        return self.config

    def prepare(self, jobs: Sequence[JobSpec]) -> None:
        """Take the target workload from the whole job list (a trace replay knows it)."""
        self._prepared = workload_from_jobs(jobs, self.settings.coverage)
        prepare = getattr(self.base, "prepare", None)
        if callable(prepare):
            prepare(jobs)

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        result = self.base.schedule(snapshot, ctx)
        pending = {view.id: view.spec for view in snapshot.pending}
        placed = [d for d in result.decisions if isinstance(d, Place)]
        if not any(_is_dlrm(pending[d.job_id]) for d in placed):
            return result
        state = snapshot.cluster.scratch()
        hosts = HostIndex.of_running(snapshot.running)
        for place in placed:
            take(state, pending[place.job_id], place.placement)
            hosts.add(place.job_id, place.placement)
        decisions: list[Decision] = []
        for decision in result.decisions:
            spec = pending.get(decision.job_id)
            if isinstance(decision, Place) and spec is not None and _is_dlrm(spec):
                decisions.append(self._plan(spec, decision, state, hosts, snapshot))
            else:
                decisions.append(decision)
        return replace(result, decisions=tuple(decisions))

    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        return self.base.score(spec, task, state, candidates, ctx)

    # -- one DLRM job -----------------------------------------------------------------

    def _plan(
        self,
        spec: JobSpec,
        decision: Place,
        state: ClusterState,
        hosts: HostIndex,
        snapshot: Snapshot,
    ) -> Place:
        work = spec.work
        assert isinstance(work, DlrmWork)
        choice = self._choose(spec, work, state, hosts, snapshot)
        tasks = decision.placement.tasks
        if choice.part is not None:
            request = choice.part.request
            assert request is not None
            node = state.node_index[choice.part.node]
            state.allocate(
                node, choice.part.gpus, choice.part.gpu_milli, request.cpu_milli, request.mem_mib
            )
            tasks = (*tasks, choice.part)
        reason = (
            f"rap: {decision.reason}; preprocessing {choice.mode.value} on {choice.where} "
            f"(net gain {choice.gain:+.3f} GPU-equivalents)"
        )
        return Place(spec.id, Placement(tasks, mode=choice.mode.value), reason)

    def _choose(
        self,
        spec: JobSpec,
        work: DlrmWork,
        state: ClusterState,
        hosts: HostIndex,
        snapshot: Snapshot,
    ) -> Offload:
        sharing = self.settings.sharing
        if sharing == "none":
            return Offload(Mode.SEQUENTIAL, 0.0)
        if sharing == "own":
            return Offload(Mode.RAP, 0.0)
        own = Offload(Mode(self.settings.fallback), 0.0)
        own_ms = work.iteration_ms(own.mode)
        # CPU first: on equal gain it leaves the GPU fragment to GPU jobs.
        offloads = [
            o
            for o in (
                self._cpu_node(spec, work, own_ms, state),
                self._remote(spec, work, own_ms, state, hosts, snapshot),
            )
            if o is not None
        ]
        best = max(offloads, key=lambda o: o.gain, default=None)
        if best is None:
            return own
        if self.settings.offload == "always" or best.gain > 0.0:
            return best
        return own

    def _remote(
        self,
        spec: JobSpec,
        work: DlrmWork,
        own_ms: float,
        state: ClusterState,
        hosts: HostIndex,
        snapshot: Snapshot,
    ) -> Offload | None:
        cfg = self.settings
        milli = _smallest_sufficient(
            range(cfg.milli_step, cfg.max_guest_milli + 1, cfg.milli_step),
            lambda m: work.iteration_ms(
                Mode.REMOTE_GPU, PartShape(PREPROCESS_PART, cfg.guest_cpu_milli, m)
            ),
        )
        request = TaskRequest(cfg.guest_cpu_milli, cfg.guest_mem_mib, 1, milli)
        nodes = feasible_nodes(spec, request, state)
        if nodes.size == 0:
            return None
        deltas = self._measure(snapshot, state).placement_deltas(state, request, nodes)
        if not cfg.idle_gpus:
            # Only spare milli of GPUs that other jobs already use: a fragment of an idle
            # GPU would break it for whole-GPU and gang jobs.
            deltas = np.where(state.gpu_free[nodes] < MILLI, deltas, np.inf)
        if not np.isfinite(deltas).any():
            return None
        node, gpu = _least_harm(deltas, nodes, state, hosts)
        part_shape = PartShape(PREPROCESS_PART, request.cpu_milli, milli)
        remote_ms = work.iteration_ms(Mode.REMOTE_GPU, part_shape)
        slowed = hosts.gpus_slowed(state.nodes[node].name, gpu)
        gain = work.profile.num_gpus * (own_ms / remote_ms - 1.0)
        gain -= slowed * work.host_slowdown(part_shape)
        name = state.nodes[node].name
        part = TaskPlacement(name, (gpu,), milli, part=PREPROCESS_PART, request=request)
        return Offload(Mode.REMOTE_GPU, gain, part, f"{name}/gpu{gpu} ({milli} milli)")

    def _cpu_node(
        self, spec: JobSpec, work: DlrmWork, own_ms: float, state: ClusterState
    ) -> Offload | None:
        cfg = self.settings
        per_core_mem = cfg.cpu_mem_mib_per_core
        one_core = TaskRequest(1000, per_core_mem)
        cpu_nodes = feasible_mask(spec, one_core, state) & (state.gpu_count == 0)
        free_cores = np.minimum(state.cpu_free // 1000, state.mem_free // max(1, per_core_mem))
        usable = np.where(cpu_nodes, free_cores, 0)
        if usable.max(initial=0) < 1:
            return None
        node = int(np.argmax(usable))  # the first CPU node offering the most cores
        cores = _smallest_sufficient(
            range(1, int(usable[node]) + 1),
            lambda c: work.iteration_ms(Mode.CPU, PartShape(PREPROCESS_PART, c * 1000)),
        )
        request = TaskRequest(cores * 1000, cores * per_core_mem)
        cpu_ms = work.iteration_ms(Mode.CPU, PartShape(PREPROCESS_PART, request.cpu_milli))
        gain = work.profile.num_gpus * (own_ms / cpu_ms - 1.0)
        name = state.nodes[node].name
        part = TaskPlacement(name, (), 0, part=PREPROCESS_PART, request=request)
        return Offload(Mode.CPU, gain, part, f"{name} ({cores} cores)")

    def _measure(self, snapshot: Snapshot, state: ClusterState) -> NodeFragmentation:
        workload = self._prepared or live_workload(
            (*snapshot.pending, *snapshot.running), self.settings.coverage
        )
        if self._fragmentation is None or self._fragmentation.workload != workload:
            self._fragmentation = NodeFragmentation(workload)
        self._fragmentation.sync(state)
        return self._fragmentation


def _is_dlrm(spec: JobSpec) -> bool:
    return spec.kind == DLRM_KIND and isinstance(spec.work, DlrmWork)


def _smallest_sufficient(sizes: range, iteration_ms: Callable[[int], float]) -> int:
    """The smallest size whose iteration time equals the largest size's (iteration time
    does not increase with size, so bisect)."""
    floor = iteration_ms(sizes[-1]) * (1.0 + 1e-9)
    low, high = 0, len(sizes) - 1
    while low < high:
        mid = (low + high) // 2
        if iteration_ms(sizes[mid]) <= floor:
            high = mid
        else:
            low = mid + 1
    return sizes[low]


def _least_harm(
    deltas: np.ndarray, nodes: np.ndarray, state: ClusterState, hosts: HostIndex
) -> tuple[int, int]:
    """The GPU slot of least fragmentation increase; near-ties to the one slowing the
    fewest host GPUs, then the tightest, then the first."""
    best = float(deltas.min())
    rows, gpus = np.nonzero(deltas <= best + NEAR_TIE_MILLI)
    ranked = sorted(
        (
            hosts.gpus_slowed(state.nodes[int(nodes[r])].name, int(g)),
            int(state.gpu_free[int(nodes[r]), int(g)]),
            int(nodes[r]),
            int(g),
        )
        for r, g in zip(rows, gpus, strict=True)
    )
    _, _, node, gpu = ranked[0]
    return node, gpu
