"""The policy API shared by the simulator and the Kubernetes controller.

A policy is a pure object: `schedule(snapshot, ctx)` reads an immutable snapshot and
returns decisions. It does no I/O, reads no clock (time is `snapshot.now`) and draws
randomness only from `ctx.rng`, so the same snapshot and seed give the same decisions
in both hosts.

Two shapes are first-class:

* `PlacementPolicy` — per-job placement in the kube-scheduler vocabulary: queue order,
  filter, score, pick, GPU selection; a gang is placed all-or-nothing.
* `RoundPolicy` — periodic whole-cluster allocation (Gavel, Sia, LAS rounds): the host
  calls it every `round_s` seconds, and it returns preemptions, resizes and placements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from policies.cluster import ClusterState
from policies.decisions import Decision, Place, SchedulingResult, Unschedulable
from policies.jobs import JobSpec, JobView, Placement, TaskPlacement, TaskRequest
from policies.placement import feasible_nodes, release, select_gpus
from policies.task_mix import TaskKey

NO_NODE_FITS = "no node fits the request"
"""A placement policy's reason when every node failed a filter; hosts that show reasons
to people may replace it with `policies.diagnosis.why_no_node_fits` (the simulator
does not pay for it)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a policy may read. `pending` is in queue-arrival order (submit time,
    then arrival sequence); `running` in the order jobs started."""

    cluster: ClusterState
    running: Sequence[JobView]
    pending: Sequence[JobView]
    now: float
    task_mix: Mapping[TaskKey, int] | None = None
    """Tasks per shape over `running` and `pending`, from a host that keeps the count as
    jobs come and go (`policies.task_mix`); None: a policy that needs it counts the jobs."""

    def job(self, job_id: str) -> JobView | None:
        for view in (*self.running, *self.pending):
            if view.id == job_id:
                return view
        return None


@dataclass(slots=True)
class Context:
    """Per-pass inputs that are not cluster state: the seeded generator."""

    rng: np.random.Generator


@dataclass(frozen=True)
class PolicyConfig:
    """Base of every policy's typed config. Fields carry `metadata={"help": ...}`."""


class Policy(ABC):
    """Base of all policies. Subclasses set `name` (registry key) and `config_type`."""

    name: ClassVar[str]
    config_type: ClassVar[type[PolicyConfig]] = PolicyConfig
    round_s: float | None = None
    """Seconds between whole-cluster rounds; None for event-driven policies."""
    defaults_follow: ClassVar[str] = ""
    """Which published setting the default config follows (`gpufleet policies` shows it)."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config if config is not None else self.config_type()
        if not isinstance(self.config, self.config_type):
            raise TypeError(f"{self.name} needs a {self.config_type.__name__}")

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            from policies.registry import register

            register(cls)

    @abstractmethod
    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        """Decide; never mutate the snapshot."""

    def describe(self) -> dict[str, object]:
        """Name and resolved config, for run metadata."""
        from dataclasses import asdict

        return {"policy": self.name, **asdict(self.config)}


@dataclass(frozen=True)
class PlacementConfig(PolicyConfig):
    blocking: bool = field(
        default=False,
        metadata={"help": "stop at the first job that does not fit (strict queue order)"},
    )


class PlacementPolicy(Policy):
    """Filter → score → pick, one job at a time in queue order.

    Subclasses implement `score` (higher is better). Ties go to the lowest node index,
    which hosts make the first node name, as the FGD artifact's scheduler does.
    """

    config_type: ClassVar[type[PolicyConfig]] = PlacementConfig
    _scratch: ClusterState | None = None
    """The last pass's scratch state, brought up to date by the next pass."""
    _queue: QueueMemo | None = None

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        state = self._scratch = snapshot.cluster.scratch(reuse=self._scratch)
        memo = self._queue = self._queue or QueueMemo(self.name)
        memo.begin_pass()
        decisions: list[Decision] = []
        failed_shapes: set[int] = set()
        blocking = getattr(self.config, "blocking", False)
        for job in self.queue_order(snapshot):
            spec = job.spec
            shape, unschedulable = memo.of(spec)
            placement = None if shape in failed_shapes else self.place(spec, state, ctx)
            if placement is None:
                # Resources only shrink within a pass, so an identical request fails too.
                failed_shapes.add(shape)
                decisions.append(unschedulable)
                if blocking:
                    break
                continue
            decisions.append(Place(spec.id, placement, self.explain(spec, placement)))
        return SchedulingResult(tuple(decisions))

    def queue_order(self, snapshot: Snapshot) -> Iterable[JobView]:
        """FIFO by default (the host keeps `pending` in arrival order)."""
        return snapshot.pending

    def place(self, spec: JobSpec, state: ClusterState, ctx: Context) -> Placement | None:
        """Place every task of `spec` on `state` (mutating it), or none of them."""
        tasks: list[TaskPlacement] = []
        for _ in range(spec.replicas):
            task = self.place_task(spec, spec.task, state, ctx)
            if task is None:
                release(state, spec, Placement(tuple(tasks)))
                return None
            tasks.append(task)
        return Placement(tuple(tasks))

    def place_task(
        self, spec: JobSpec, task: TaskRequest, state: ClusterState, ctx: Context
    ) -> TaskPlacement | None:
        node = self.pick_node(spec, task, state, ctx)
        if node is None:
            return None
        gpus = self.choose_gpus(task, state, node, ctx)
        state.allocate(node, gpus, task.gpu_milli, task.cpu_milli, task.mem_mib)
        return TaskPlacement(state.nodes[node].name, gpus, task.gpu_milli)

    def pick_node(
        self, spec: JobSpec, task: TaskRequest, state: ClusterState, ctx: Context
    ) -> int | None:
        """The feasible node with the best `score` (lowest index on ties), or None."""
        candidates = self.candidates(spec, task, state)
        if candidates.size == 0:
            return None
        scores = self.score(spec, task, state, candidates, ctx)
        return int(candidates[int(np.argmax(scores))])

    def candidates(self, spec: JobSpec, task: TaskRequest, state: ClusterState) -> np.ndarray:
        """Node indices `score` ranks, ascending: every feasible node by default."""
        return feasible_nodes(spec, task, state)

    @abstractmethod
    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        """Scores for the feasible node indices in `candidates`; higher wins."""

    def choose_gpus(
        self, task: TaskRequest, state: ClusterState, node: int, ctx: Context
    ) -> tuple[int, ...]:
        return select_gpus(task, state.gpu_free[node], state.gpu_count[node])

    def explain(self, spec: JobSpec, placement: Placement) -> str:
        return f"{self.name}: best-scoring node {placement.tasks[0].node}"


class RoundPolicy(Policy):
    """Periodic whole-cluster allocation. The host runs `schedule` every `round_s`
    seconds (and may also run it on arrivals, where the policy allows)."""

    round_s: float | None = 60.0


class QueueMemo:
    """Per pending job, what a pass needs about it that never changes: its request's
    shape (a small int; jobs with equal `request_key`s share it) and its Unschedulable
    verdict. Every pass of a placement policy walks the whole queue; building and
    hashing each job's key and verdict anew every pass was most of a pass's time on a
    long queue (a forecast of 5,000 pods). Jobs are remembered from one pass to the
    next only (a job is known by its id and the very spec object it had)."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self._shapes: dict[tuple[object, ...], int] = {}
        self._jobs: dict[str, tuple[JobSpec, int, Unschedulable]] = {}
        self._last: dict[str, tuple[JobSpec, int, Unschedulable]] = {}

    def begin_pass(self) -> None:
        self._last, self._jobs = self._jobs, {}

    def of(self, spec: JobSpec) -> tuple[int, Unschedulable]:
        known = self._last.get(spec.id)
        if known is None or known[0] is not spec:
            shape = self._shapes.setdefault(request_key(spec), len(self._shapes))
            known = (spec, shape, Unschedulable(spec.id, NO_NODE_FITS, self.policy))
        self._jobs[spec.id] = known
        return known[1], known[2]


def request_key(spec: JobSpec) -> tuple[object, ...]:
    """Everything about a job that decides where it fits: jobs with equal keys fit on
    exactly the same nodes."""
    return (
        spec.task,
        spec.replicas,
        spec.allowed_models,
        tuple(sorted(spec.node_selector.items())),
        spec.tolerations,
    )
