"""RAP sharing (ASPLOS'24), registered as `rap`: decides per DLRM job whether its
input preprocessing runs on its own GPUs (RAP), on spare milli-GPU of other jobs' GPUs
(cross-job sharing, slowing those hosts) or on a CPU node.

It predicts iteration times through the job's `DlrmWork`, i.e. the co-run model of
`policies.rap_model` (stage packing in `policies.rap_packing`); docs/rap.md derives
every default.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from policies.base import Context, PlacementConfig, PlacementPolicy, PolicyConfig, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.decisions import Decision, Place, SchedulingResult
from policies.dlrm import DLRM_KIND, PREPROCESS_PART, DlrmWork, Mode
from policies.fragmentation import NodeFragmentation
from policies.jobs import JobSpec, JobView, PartShape, Placement, TaskPlacement, TaskRequest
from policies.placement import feasible_mask, feasible_nodes, take
from policies.registry import build_config, policy_class
from policies.target_workload import (
    DEFAULT_COVERAGE,
    TargetWorkload,
    live_workload,
    workload_from_jobs,
)

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
        # Checked on the class: a round policy has no `blocking` option to build it with.
        cls = policy_class(self.settings.base)
        if not issubclass(cls, PlacementPolicy) or issubclass(cls, RapSharing):
            raise ValueError(f"rap base {self.settings.base!r} must be a placement policy")
        self.base = cls(build_config(cls.config_type, {"blocking": self.settings.blocking}))
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
