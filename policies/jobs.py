"""Jobs: what they ask for, how much work they carry, and how they stand right now.

A job is one or more identical tasks (replicas). A task asks for CPU, memory and either
whole GPUs or a fraction (milli-GPU) of one GPU. A job's *work* says how fast it runs on
an allocation: a fixed duration, or an amount of work and a throughput per GPU model.
Later job kinds (elastic, DLRM, continual-training windows) bring their own `WorkModel`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

from policies.cluster import MILLI, Toleration
from policies.gpu_models import family_admits


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """Resources for one task. `gpu_milli` is per GPU: 1000 for whole GPUs, less for a
    sharing task (which always takes exactly one GPU)."""

    cpu_milli: int = 0
    mem_mib: int = 0
    num_gpus: int = 0
    gpu_milli: int = 0

    def __post_init__(self) -> None:
        if min(self.cpu_milli, self.mem_mib, self.num_gpus, self.gpu_milli) < 0:
            raise ValueError("task requests must not be negative")
        if self.num_gpus and not 0 < self.gpu_milli <= MILLI:
            raise ValueError("a GPU task needs 0 < gpu_milli <= 1000")
        if self.num_gpus > 1 and self.gpu_milli != MILLI:
            raise ValueError("a multi-GPU task takes whole GPUs (gpu_milli = 1000)")
        if not self.num_gpus and self.gpu_milli:
            raise ValueError("gpu_milli without num_gpus")

    @property
    def is_sharing(self) -> bool:
        return self.num_gpus == 1 and self.gpu_milli < MILLI

    @property
    def gpu_total_milli(self) -> int:
        return self.num_gpus * self.gpu_milli

    def with_gpus(self, num_gpus: int) -> TaskRequest:
        return TaskRequest(self.cpu_milli, self.mem_mib, num_gpus, MILLI if num_gpus else 0)


@dataclass(frozen=True, slots=True)
class PartShape:
    """An auxiliary part of a job placed apart from its tasks (see `TaskPlacement.part`):
    its name and the CPU and GPU it got (`gpu_milli` 0: it runs on CPU only)."""

    name: str
    cpu_milli: int = 0
    gpu_milli: int = 0


@dataclass(frozen=True, slots=True)
class AllocationShape:
    """What a work model needs to know of a placement to say how fast a job runs."""

    gpu_model: str
    num_gpus: int
    num_nodes: int
    gpu_milli: int = MILLI
    replicas: int = 1
    gpus_per_node: tuple[int, ...] = ()
    """GPUs on each node of the placement (empty when unknown: assume packed)."""
    gpu_models: tuple[str, ...] = ()
    """Every GPU model in the placement, sorted (more than one only for a straddling job)."""
    mode: str = ""
    """How the job runs on this placement (`Placement.mode`); "" for its default."""
    parts: tuple[PartShape, ...] = ()
    """The job's auxiliary parts placed apart from its tasks."""


@runtime_checkable
class WorkModel(Protocol):
    """How much work a job carries and how fast an allocation gets through it.

    `rate` returns work units per second for an allocation shape, given the work already
    done (so statistical efficiency can change as training goes on).
    """

    @property
    def total(self) -> float: ...

    def rate(self, shape: AllocationShape, done: float) -> float: ...


@runtime_checkable
class SlowsHosts(Protocol):
    """A work model whose auxiliary parts slow the jobs whose GPU they share (a remote
    preprocessing part interferes with its host): `host_slowdown` is the fraction of
    speed each such job loses while the part is there."""

    def host_slowdown(self, part: PartShape) -> float: ...


@dataclass(frozen=True, slots=True)
class FixedDuration:
    """Runs for `seconds` wherever it lands (trace replay with recorded durations)."""

    seconds: float

    @property
    def total(self) -> float:
        return self.seconds

    def rate(self, shape: AllocationShape, done: float) -> float:
        return 1.0


@dataclass(frozen=True, slots=True)
class ModelThroughput:
    """`work` units at `throughput[model]` units/s when the job gets its full request.

    A GPU model missing from the table falls back to `default` (1.0 unless given), so a
    trace job that names no models still runs everywhere at its recorded speed.
    """

    work: float
    throughput: Mapping[str, float]
    default: float = 1.0

    @property
    def total(self) -> float:
        return self.work

    def rate(self, shape: AllocationShape, done: float) -> float:
        return self.throughput.get(shape.gpu_model, self.default)


@dataclass(frozen=True, slots=True)
class Elasticity:
    """Bounds for jobs whose replica count a round-based policy may change."""

    min_replicas: int = 1
    max_replicas: int = 1


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as submitted. Immutable; its runtime standing lives in `JobView`."""

    id: str
    submit_time: float
    task: TaskRequest
    work: WorkModel
    replicas: int = 1
    allowed_models: frozenset[str] | None = None
    priority: int = 0
    gang: bool = True
    restart_cost_s: float = 0.0
    kind: str = "batch"
    elastic: Elasticity | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    attributes: Mapping[str, object] = field(default_factory=dict)
    preemptible: bool = True
    """False: once running, no policy preempts or resizes the job (it keeps its placement)."""
    gpu_milli_total: int = field(init=False, repr=False, compare=False)
    """Milli-GPU over all replicas; precomputed because schedulers read it constantly."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu_milli_total", self.replicas * self.task.gpu_total_milli)
        if self.replicas < 1:
            raise ValueError(f"job {self.id}: replicas must be >= 1")
        if not math.isfinite(self.submit_time) or self.submit_time < 0:
            raise ValueError(f"job {self.id}: submit_time must be a finite time >= 0")
        if not self.work.total > 0:
            raise ValueError(f"job {self.id}: work must be positive")

    @property
    def gpus(self) -> int:
        """Whole GPUs the job touches at its requested size."""
        return self.replicas * self.task.num_gpus

    def allows(self, model: str) -> bool:
        """Whether the job may use some GPUs of per-model class `model` (a node's
        `gpu_model`); which nodes of it, `placement.model_mask` decides."""
        return family_admits(self.allowed_models, model)


@dataclass(frozen=True, slots=True)
class TaskPlacement:
    """Where one task goes: a node (by name) and GPU indices on it.

    A task with a `part` name is not one of the job's replicas but an auxiliary part
    placed apart from them (a DLRM job's preprocessing on another job's GPU or on a CPU
    node); it takes `request` instead of the job's task request.
    """

    node: str
    gpus: tuple[int, ...] = ()
    gpu_milli: int = 0
    part: str = ""
    request: TaskRequest | None = None

    def __post_init__(self) -> None:
        if bool(self.part) != (self.request is not None):
            raise ValueError("an auxiliary part needs its own request, and only a part has one")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where every task of a job goes. A gang job is placed whole or not at all."""

    tasks: tuple[TaskPlacement, ...]
    mode: str = ""
    """How the job runs here, for job kinds with several ways (a DLRM job's
    preprocessing mode, see `policies.dlrm.Mode`); "" for the kind's default."""
    gpu_milli_total: int = field(init=False, repr=False, compare=False)
    """Milli-GPU over all tasks; precomputed because schedulers read it constantly."""
    replica_tasks: tuple[TaskPlacement, ...] = field(init=False, repr=False, compare=False)
    """The job's own tasks, without auxiliary parts (precomputed: both hosts read it
    several times per placement)."""
    part_tasks: tuple[TaskPlacement, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        total, parts = 0, False
        for t in self.tasks:  # a plain loop: a million placements make this hot
            total += len(t.gpus) * t.gpu_milli
            parts = parts or bool(t.part)
        object.__setattr__(self, "gpu_milli_total", total)
        own = tuple(t for t in self.tasks if not t.part) if parts else self.tasks
        object.__setattr__(self, "replica_tasks", own)
        object.__setattr__(
            self, "part_tasks", tuple(t for t in self.tasks if t.part) if parts else ()
        )

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.node for t in self.tasks))

    @property
    def num_gpus(self) -> int:
        return sum(len(t.gpus) for t in self.tasks)


class JobStatus(Enum):
    PENDING = "pending"
    RUNNING = "running"


@dataclass(frozen=True, slots=True)
class JobView:
    """A job's standing at the moment of a snapshot.

    `attained_gpu_s` is GPU-seconds received up to `service_since`; while running, the job
    keeps gaining `placement.num_gpus` GPU-seconds per second after that (`attained(now)`).
    """

    spec: JobSpec
    status: JobStatus
    placement: Placement | None = None
    shape: AllocationShape | None = None
    attained_gpu_s: float = 0.0
    service_since: float = 0.0
    started_at: float | None = None
    queued_since: float = 0.0
    restarts: int = 0
    done: float = 0.0
    restart_until: float = 0.0
    """While running, the job makes no progress before this time (restart delay)."""
    service_by_model: Mapping[str, float] = field(default_factory=dict)
    """GPU-seconds received on each GPU model up to `service_since`."""
    hints: object = None
    """What the job reports about itself (AdaptDL-style scheduling hints, e.g. a
    `policies.elastic.GoodputHints`); policies check the type they understand."""

    @property
    def id(self) -> str:
        return self.spec.id

    def attained(self, now: float) -> float:
        """GPU-seconds received so far."""
        if self.status is JobStatus.RUNNING and self.placement is not None:
            gpus = self.placement.gpu_milli_total / MILLI
            return self.attained_gpu_s + gpus * max(0.0, now - self.service_since)
        return self.attained_gpu_s

    @property
    def remaining_fraction(self) -> float:
        return max(0.0, 1.0 - self.done / self.spec.work.total)
