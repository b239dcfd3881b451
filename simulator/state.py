"""The simulator's mutable world: cluster arrays plus each job's progress.

Decisions from a policy are applied here and nowhere else. Job progress is
event-stepped: a running job advances at `rate` work units per second from
`progress_since` (which lies in the future while the job pays a restart delay), so its
completion time is known exactly and nothing is ticked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from policies import (
    MILLI,
    AllocationShape,
    ClusterState,
    JobSpec,
    JobStatus,
    JobView,
    Placement,
    TaskPlacement,
    check_placement,
)
from policies.placement import allocation_shape, select_gpus
from simulator.colocation import Colocation


@dataclass(slots=True)
class JobRun:
    """One job's life in the simulator."""

    spec: JobSpec
    seq: int
    status: JobStatus = JobStatus.PENDING
    placement: Placement | None = None
    shape: AllocationShape | None = None
    done: float = 0.0
    rate: float = 0.0
    progress_since: float = 0.0
    attained_gpu_s: float = 0.0
    service_since: float = 0.0
    queued_since: float = 0.0
    first_start: float | None = None
    end: float | None = None
    restarts: int = 0
    epoch: int = 0
    models_used: set[str] = field(default_factory=set)
    max_gpus: int = 0
    last_placement: str = ""
    agent: Any = None
    """Per-run companion of the work model (`work.agent()`, e.g. an adaptive job's own
    batch tuning), asked for rates and hints in place of the work model."""
    service_by_model: dict[str, float] = field(default_factory=dict)
    change_at: float | None = None
    """Progress at which the rate changes next (e.g. an epoch boundary), if known."""
    _view: JobView | None = None

    def __post_init__(self) -> None:
        make_agent = getattr(self.spec.work, "agent", None)
        if self.agent is None and callable(make_agent):
            self.agent = make_agent()

    def work_rate(self) -> float:
        """The work model's (or its agent's) rate on the current shape; also notes the
        progress at which that rate next changes."""
        assert self.shape is not None
        source = self.agent if self.agent is not None else self.spec.work
        rate = float(source.rate(self.shape, self.done))
        next_change = getattr(source, "next_change", None)
        self.change_at = next_change(self.done) if callable(next_change) else None
        return rate

    def view(self) -> JobView:
        """Cached immutable view; rebuilt only after the job changes."""
        if self._view is None:
            self._view = JobView(
                spec=self.spec,
                status=self.status,
                placement=self.placement,
                shape=self.shape,
                attained_gpu_s=self.attained_gpu_s,
                service_since=self.service_since,
                started_at=self.first_start,
                queued_since=self.queued_since,
                restarts=self.restarts,
                done=self.done,
                restart_until=self.progress_since,
                service_by_model=dict(self.service_by_model),
                hints=self.agent.hints() if hasattr(self.agent, "hints") else None,
            )
        return self._view

    def sync(self, now: float) -> None:
        """Bring `done` and attained service up to `now`."""
        if self.status is not JobStatus.RUNNING or self.placement is None:
            return
        if now > self.progress_since:
            self.done = min(
                self.spec.work.total, self.done + self.rate * (now - self.progress_since)
            )
            self.progress_since = now
        gpu_s = self.placement.gpu_milli_total / MILLI * (now - self.service_since)
        self.attained_gpu_s += gpu_s
        if self.shape is not None and gpu_s:
            model = self.shape.gpu_model
            self.service_by_model[model] = self.service_by_model.get(model, 0.0) + gpu_s
        self.service_since = now
        self._view = None

    def finish_time(self) -> float:
        remaining = max(0.0, self.spec.work.total - self.done)
        return self.progress_since + remaining / self.rate


class SimCluster:
    """Cluster arrays plus the jobs on them; applies placements and evictions."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.model_of_node = [n.gpu_model for n in state.nodes]
        self.models = state.gpu_models
        # Allocated milli-GPU per model, kept incrementally for the timeline.
        self.alloc_by_model = dict.fromkeys(self.models, 0)
        self.alloc_milli = 0
        self.colocation = Colocation()
        self._one_task_shapes: dict[tuple[str, int, int, str], AllocationShape] = {}

    def shape_of(self, placement: Placement) -> AllocationShape:
        """`allocation_shape`, memoised for one-task placements: their shape depends only
        on the node's GPU model, the GPU count and share and the mode, so a handful of
        shapes recur for millions of jobs (building one is a tenth of a job's cost)."""
        tasks = placement.tasks
        if len(tasks) != 1 or tasks[0].part:
            return allocation_shape(placement, self.state)
        task = tasks[0]
        model = self.model_of_node[self.state.node_index[task.node]]
        key = (model, len(task.gpus), task.gpu_milli, placement.mode)
        shape = self._one_task_shapes.get(key)
        if shape is None:
            shape = self._one_task_shapes[key] = allocation_shape(placement, self.state)
        return shape

    def bind(self, job: JobRun, placement: Placement) -> None:
        """Take the placement's resources. One that breaks the placement contract raises
        `PlacementError` and changes nothing."""
        check_placement(job.spec, placement, self.state)
        for task in placement.tasks:
            req = task.request or job.spec.task
            node = self.state.node_index[task.node]
            self.state.allocate(node, task.gpus, task.gpu_milli, req.cpu_milli, req.mem_mib)
            self._count(node, len(task.gpus) * task.gpu_milli)
        self.colocation.add(job.spec, placement)

    def occupy(self, job: JobRun, node_name: str, gpus: tuple[int, ...] | None) -> Placement | None:
        """Take what the controller counts for a pod no policy placed (`CapacityLedger`):
        `gpus` if they are free, else the GPUs `select_gpus` picks, else CPU and memory
        only. None when even those do not fit (the controller leaves such a pod uncounted)."""
        task = job.spec.task
        node = self.state.node_index[node_name]
        free, count = self.state.gpu_free[node], int(self.state.gpu_count[node])
        if gpus is None or not all(g < count and free[g] >= task.gpu_milli for g in gpus):
            fits = task.num_gpus and (free >= task.gpu_milli).sum() >= task.num_gpus
            gpus = select_gpus(task, free, count) if fits else ()
        milli = task.gpu_milli if gpus else 0
        try:
            self.state.allocate(node, gpus, milli, task.cpu_milli, task.mem_mib)
        except ValueError:
            return None
        self._count(node, len(gpus) * milli)
        return Placement((TaskPlacement(node_name, gpus, milli),))

    def unbind(self, job: JobRun) -> None:
        assert job.placement is not None
        for task in job.placement.tasks:
            self._release_task(job, task)
        self.colocation.remove(job.spec, job.placement)

    def speed_factor(self, job: JobRun) -> float:
        """Share of its speed a running job keeps beside other jobs' auxiliary parts."""
        assert job.placement is not None
        return self.colocation.speed_factor(job.spec.id, job.placement)

    def _release_task(self, job: JobRun, task: TaskPlacement) -> None:
        req = task.request or job.spec.task
        node = self.state.node_index[task.node]
        self.state.release(node, task.gpus, task.gpu_milli, req.cpu_milli, req.mem_mib)
        self._count(node, -len(task.gpus) * task.gpu_milli)

    def _count(self, node: int, milli: int) -> None:
        if milli:
            self.alloc_by_model[self.model_of_node[node]] += milli
            self.alloc_milli += milli

    def gpus_by_model(self) -> tuple[float, ...]:
        return tuple(self.alloc_by_model[m] / MILLI for m in self.models)


class JobViews(Sequence[JobView]):
    """Views of a pass's jobs, built only when a policy reads them: placement policies
    never look at running jobs, and building 10^7 views would dominate a long replay.
    The jobs are listed from the host's dict on first read, not every pass (a pass
    that reads nothing costs nothing however many jobs run); after the pass, `close()`
    makes an unread sequence refuse reads, since the dict has changed since."""

    __slots__ = ("_jobs", "_source")

    def __init__(self, jobs: Mapping[str, JobRun]) -> None:
        self._source: Mapping[str, JobRun] | None = jobs
        self._jobs: list[JobRun] | None = None

    def close(self) -> None:
        self._source = None

    def _list(self) -> list[JobRun]:
        if self._jobs is None:
            if self._source is None:
                raise RuntimeError("a snapshot's jobs were read after its scheduling pass")
            self._jobs = list(self._source.values())
        return self._jobs

    def __len__(self) -> int:
        if self._jobs is None and self._source is not None:
            return len(self._source)
        return len(self._list())

    @overload
    def __getitem__(self, index: int) -> JobView: ...

    @overload
    def __getitem__(self, index: slice) -> list[JobView]: ...

    def __getitem__(self, index: int | slice) -> JobView | list[JobView]:
        if isinstance(index, slice):
            return [job.view() for job in self._list()[index]]
        return self._list()[index].view()

    def __iter__(self) -> Iterator[JobView]:
        return (job.view() for job in self._list())
