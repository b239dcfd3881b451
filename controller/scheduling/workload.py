"""From pods to the policy's vocabulary: nodes become `NodeSpec`s, pending pods become
jobs (a gang of pods is one job with `replicas` tasks), and bound pods of ours become
running `JobView`s with their placements.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from controller.ctj.continual import retraining_job
from controller.ctj.runtime import restart_delay, work_done
from controller.dra.inventory import DraAsk, DraState
from controller.kube.objects import (
    JOB_LABEL,
    MODEL_LABELS,
    POD_GROUP_LABEL,
    RACK_LABELS,
    NodeRecord,
    PodRecord,
    Problem,
    first_label,
)
from controller.scheduling.encoders import GpuEncoder, share_problem
from controller.scheduling.ledger import Charge
from policies import (
    ClusterState,
    FixedDuration,
    JobSpec,
    JobStatus,
    JobView,
    NodeSpec,
    Placement,
    TaskPlacement,
    TaskRequest,
)
from policies.continual import RETRAIN_KIND
from policies.gpu_models import node_model
from policies.placement import allocation_shape

DEFAULT_RUNTIME_S = 3600.0
"""What policies that estimate remaining work assume for a pod that states no runtime."""
UNKNOWN_MODEL = "unknown"


def node_spec(node: NodeRecord, encoder: GpuEncoder) -> NodeSpec:
    gpus = encoder.node_gpus(node)
    # GFD's `NVIDIA-A100-SXM4-40GB` is model `A100` to policies (policies/gpu_models.py).
    product = first_label(node.labels, MODEL_LABELS, UNKNOWN_MODEL) if gpus else ""
    return NodeSpec(
        name=node.name,
        cpu_milli=node.cpu_milli,
        mem_mib=node.mem_mib,
        gpus=gpus,
        gpu_model=node_model(product),
        labels=node.labels,
        taints=node.taints,
        rack=first_label(node.labels, RACK_LABELS),
        gpu_product=product,
        shares_gpus=encoder.shares_gpus,
    )


def task_request(pod: PodRecord, encoder: GpuEncoder) -> TaskRequest:
    num_gpus, gpu_milli = encoder.request(pod)
    return TaskRequest(pod.cpu_milli, pod.mem_mib, num_gpus, gpu_milli)


class DraWait(ValueError):
    """The pod's claims are not ready to be planned (not created, not seen, in flight)."""


class DraProblem(ValueError):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def dra_ask(
    pod: PodRecord, encoder: GpuEncoder, dra: DraState | None, as_new: bool = False
) -> DraAsk | None:
    """The pod's DRA request (None for a pod without claims). Raises `DraWait` or
    `DraProblem`. `as_new`: what its claims ask, allocated or not (a running job's
    request, as the policy saw it when it was pending)."""
    if not pod.claims or dra is None:
        return None
    if encoder.request(pod)[0]:
        field = "spec.resourceClaims"
        raise DraProblem(
            Problem(field, "asks for GPUs both as a device-plugin resource and as claims")
        )
    try:
        ask = dra.ask(pod, as_new)
    except (KeyError, IndexError, TypeError, ArithmeticError) as err:
        # A claim shape the reader let through but sizing cannot take: its pod alone.
        raise DraProblem(Problem("spec.resourceClaims", f"cannot be sized: {err!r}")) from err
    if isinstance(ask, Problem):
        raise DraProblem(ask)
    if isinstance(ask, str):
        raise DraWait(ask)
    return ask


def job_id(pod: PodRecord) -> str:
    """The job a pod belongs to: an explicit id, else its gang label, else the pod."""
    if pod.meta.job_id:
        return pod.meta.job_id
    group = pod.labels.get(JOB_LABEL) or pod.labels.get(POD_GROUP_LABEL)
    return f"{pod.namespace}/{group or pod.name}"


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job ready for the policy; `pods[i]` takes `placement.tasks[i]`."""

    spec: JobSpec
    pods: tuple[PodRecord, ...]
    seq: int
    asks: tuple[DraAsk | None, ...] = ()
    """Each pod's DRA request (empty when no pod has claims)."""

    @property
    def queued_since(self) -> float:
        """When it arrived: its pods' creation, or its declared submit time if later
        (creation times are whole seconds; a CTJ window arrives at its opening, which
        the share allocators compare with their last round, as the simulator's do)."""
        return max(min(p.created for p in self.pods), self.spec.submit_time)

    def view(self) -> JobView:
        return JobView(
            spec=self.spec,
            status=JobStatus.PENDING,
            attained_gpu_s=self.pods[0].meta.attained_gpu_s,
            service_by_model=self.pods[0].meta.attained_by_model,
            queued_since=self.queued_since,
            restarts=self.pods[0].meta.restarts,
        )


@dataclass(frozen=True, slots=True)
class RejectedJob:
    """Pods that cannot become a job as written (bad annotations, mismatched gang)."""

    job_id: str
    pods: tuple[PodRecord, ...]
    problem: Problem


@dataclass(frozen=True, slots=True)
class Workload:
    pending: list[PendingJob]
    rejected: list[RejectedJob]
    waiting: dict[str, str]
    """Gangs not complete yet: job id → why it waits."""


def build_workload(
    pods: Iterable[PodRecord],
    seq: Mapping[str, int],
    encoder: GpuEncoder,
    dra: DraState | None = None,
) -> Workload:
    """Pending jobs in queue order (submit time, then the order pods were first seen)."""
    return _workload(pods, lambda jid, members: _decode_job(jid, members, seq, encoder, dra))


Decoded = PendingJob | Problem | str
"""A job, the first problem that stops its pods making one, or why it waits."""


def _workload(
    pods: Iterable[PodRecord], decode: Callable[[str, list[PodRecord]], Decoded]
) -> Workload:
    groups: dict[str, list[PodRecord]] = {}
    for pod in pods:
        groups.setdefault(job_id(pod), []).append(pod)
    pending: list[PendingJob] = []
    rejected: list[RejectedJob] = []
    waiting: dict[str, str] = {}
    for jid, members in groups.items():
        members.sort(key=lambda p: p.name)
        job = decode(jid, members)
        if isinstance(job, str):
            waiting[jid] = job
            continue
        if isinstance(job, Problem):
            rejected.append(RejectedJob(jid, tuple(members), job))
            continue
        if job.spec.replicas < _gang_size(members):
            waiting[jid] = f"gang has {job.spec.replicas} of {_gang_size(members)} pods"
            continue
        pending.append(job)
    pending.sort(key=lambda j: (j.spec.submit_time, j.seq))
    return Workload(pending, rejected, waiting)


@dataclass(frozen=True, slots=True)
class _Kept:
    """A job as decoded from these pod records, and its view."""

    pods: tuple[PodRecord, ...]
    seqs: tuple[int, ...]
    job: Decoded
    view: JobView | None


@dataclass(frozen=True, slots=True)
class _Pass:
    """A pass's pod records, in order, their arrival numbers, and the workload."""

    pods: list[PodRecord]
    seqs: list[int]
    work: Workload


def _same(old: list[PodRecord], new: list[PodRecord]) -> bool:
    return len(old) == len(new) and all(map(operator.is_, old, new))


def _copy(work: Workload) -> Workload:
    """A workload whose lists its receiver may change without changing the kept one."""
    return Workload(list(work.pending), list(work.rejected), dict(work.waiting))


class PendingJobs:
    """`build_workload` for the scheduler's passes, keeping each job from pass to pass:
    a job is decoded again only when one of its pods changed (a record that is neither
    the one decoded nor equal to it: `PodRecord` equality ignores the resourceVersion
    and our own FailedScheduling condition), and an unchanged job keeps its `JobView`
    object, so a pass costs in proportion to what changed (rebuilding every view cost
    ~17 ms a pass at 1,500 pending; benchmarks/pending_pass.py) and the shadow mirror
    can tell unchanged views by identity. A pass whose pods are the last pass's records
    returns the last queue without grouping them again. Jobs with DRA claims are decoded
    every pass: their requests follow the claims, which change without their pods."""

    def __init__(self, encoder: GpuEncoder) -> None:
        self.encoder = encoder
        self._kept: dict[str, _Kept] = {}
        self._selector: dict[str, str] = {}
        """What device-plugin pods select (`DraState.device_plugin_selector`) when the
        kept jobs were decoded: it is part of their specs."""
        self._last: _Pass | None = None
        """The last pass's pods and queue (None: it had jobs with claims)."""

    def workload(
        self, pods: Iterable[PodRecord], seq: Mapping[str, int], dra: DraState | None = None
    ) -> Workload:
        """What `build_workload(pods, seq, self.encoder, dra)` returns, equal job for job."""
        selector = dra.device_plugin_selector() if dra is not None else {}
        if selector != self._selector:
            self._kept, self._selector, self._last = {}, selector, None
        records = list(pods)
        seqs = [seq.get(p.uid, 0) for p in records]
        last = self._last
        if last is not None and _same(last.pods, records) and last.seqs == seqs:
            return _copy(last.work)  # not a pod changed: the queue of the last pass
        kept: dict[str, _Kept] = {}
        decoded_claims = False

        def decode(jid: str, members: list[PodRecord]) -> Decoded:
            nonlocal decoded_claims
            if dra is not None and any(p.claims for p in members):
                decoded_claims = True
                return _decode_job(jid, members, seq, self.encoder, dra)
            entry = self._entry(jid, tuple(members), seq, dra)
            kept[jid] = entry
            return entry.job

        work = _workload(records, decode)
        self._kept = kept
        self._last = None if decoded_claims else _Pass(records, seqs, _copy(work))
        return work

    def view(self, job: PendingJob) -> JobView:
        """`job.view()`, the same object while the job is unchanged."""
        entry = self._kept.get(job.spec.id)
        if entry is None or entry.job is not job or entry.view is None:
            return job.view()
        return entry.view

    def _entry(
        self, jid: str, pods: tuple[PodRecord, ...], seq: Mapping[str, int], dra: DraState | None
    ) -> _Kept:
        seqs = tuple(seq.get(p.uid, 0) for p in pods)
        old = self._kept.get(jid)
        if old is not None and old.seqs == seqs and len(old.pods) == len(pods):
            if all(a is b for a, b in zip(old.pods, pods, strict=True)):
                return old
            if old.pods == pods:  # new records, same content: the job holds the new ones
                job = old.job
                fresh = replace(job, pods=pods) if isinstance(job, PendingJob) else job
                return _Kept(pods, seqs, fresh, old.view)
        job = _decode_job(jid, list(pods), seq, self.encoder, dra)
        return _Kept(pods, seqs, job, job.view() if isinstance(job, PendingJob) else None)


def _decode_job(
    jid: str,
    members: list[PodRecord],
    seq: Mapping[str, int],
    encoder: GpuEncoder,
    dra: DraState | None,
) -> Decoded:
    """The job the pods make, the first problem that stops them making one, or why it
    waits."""
    for member in members:
        problem = member.problems[0] if member.problems else share_problem(member, encoder)
        if problem is not None:
            return problem
    try:
        return _pending_job(jid, members, seq, encoder, dra)
    except DraWait as wait:
        return str(wait)
    except DraProblem as err:
        return err.problem
    except ValueError as err:
        return Problem("spec.containers[].resources", str(err))


def _gang_size(members: list[PodRecord]) -> int:
    sizes = {p.meta.gang_size for p in members if p.meta.gang_size is not None}
    return max(sizes) if sizes else len(members)


def _pending_job(
    jid: str,
    members: list[PodRecord],
    seq: Mapping[str, int],
    encoder: GpuEncoder,
    dra: DraState | None = None,
    as_new: bool = False,
) -> PendingJob:
    first = members[0]
    asks = tuple(dra_ask(p, encoder, dra, as_new) for p in members)
    tasks = [_task(p, encoder, ask) for p, ask in zip(members, asks, strict=True)]
    task = tasks[0]
    node_selector = dict(first.node_selector)
    allowed = first.meta.gpu_models
    if asks[0] is not None:
        node_selector.update(asks[0].labels)
        allowed = allowed if allowed is not None else asks[0].models
    elif task.num_gpus and dra is not None:
        node_selector.update(dra.device_plugin_selector())
    for other, other_task, ask in zip(members[1:], tasks[1:], asks[1:], strict=True):
        same_place = ask is None or {**other.node_selector, **ask.labels} == node_selector
        if other_task != task or not same_place:
            pair = f"{first.name} and {other.name}"
            raise ValueError(f"gang {jid}: pods {pair} ask for different resources")
    submitted = first.meta.submit_time
    spec = JobSpec(
        id=jid,
        submit_time=min(p.created for p in members) if submitted is None else submitted,
        task=task,
        work=FixedDuration(first.meta.runtime_s or DEFAULT_RUNTIME_S),
        replicas=len(members),
        allowed_models=allowed,
        priority=max(p.priority for p in members),
        node_selector=node_selector,
        tolerations=first.tolerations,
        kind="pod",
        preemptible=all(p.meta.preemptible for p in members),
    )
    # A CTJ window's pod with accuracy facts is the simulator's retraining job.
    spec = retraining_job(spec, first.annotations, first.labels)
    seq_of = min(seq.get(p.uid, 0) for p in members)
    return PendingJob(spec, tuple(members), seq_of, asks if any(asks) else ())


def _task(pod: PodRecord, encoder: GpuEncoder, ask: DraAsk | None) -> TaskRequest:
    if ask is None:
        return task_request(pod, encoder)
    return TaskRequest(pod.cpu_milli, pod.mem_mib, ask.num_gpus, ask.gpu_milli)


class RunningJobs:
    """Our placed pods (bound, or assumed and not yet echoed) grouped into running jobs,
    kept up to date as pods change: a pass reads the views without regrouping thousands
    of pods, and only jobs that changed since the last pass are rebuilt."""

    def __init__(self, encoder: GpuEncoder, dra: DraState | None = None) -> None:
        self.encoder = encoder
        self.dra = dra
        self._members: dict[str, dict[str, PodRecord]] = {}
        self._job_of: dict[str, str] = {}
        self._views: dict[str, JobView] = {}
        self._dirty: set[str] = set()

    def put(self, pod: PodRecord) -> None:
        jid = job_id(pod)
        if self._job_of.get(pod.uid, jid) != jid:
            self.drop(pod.uid)
        self._job_of[pod.uid] = jid
        self._members.setdefault(jid, {})[pod.uid] = pod
        self._dirty.add(jid)

    def drop(self, uid: str) -> None:
        jid = self._job_of.pop(uid, None)
        if jid is None:
            return
        members = self._members[jid]
        del members[uid]
        if not members:
            del self._members[jid]
        self._dirty.add(jid)

    def touch(self, uid: str) -> None:
        """The pod's charge changed."""
        if uid in self._job_of:
            self._dirty.add(self._job_of[uid])

    def pods_of(self, jid: str) -> list[PodRecord]:
        return sorted(self._members.get(jid, {}).values(), key=lambda p: p.name)

    def view_of(
        self, jid: str, charges: Mapping[str, Charge], cluster: ClusterState, now: float
    ) -> JobView | None:
        self.views(charges, cluster, now)
        return self._views.get(jid)

    def views(
        self, charges: Mapping[str, Charge], cluster: ClusterState, now: float
    ) -> list[JobView]:
        """Running jobs in the order they started (as this controller saw them: jobs that
        change keep their place, new ones join at the end in start order)."""
        joined = []
        for jid in self._dirty:
            view = self._build(jid, charges, cluster, now)
            if view is None:
                self._views.pop(jid, None)
            elif jid in self._views:
                self._views[jid] = view
            else:
                joined.append(view)
        self._dirty.clear()
        for view in sorted(joined, key=lambda v: (v.started_at or 0.0, v.id)):
            self._views[view.id] = view
        return list(self._views.values())

    def _build(
        self, jid: str, charges: Mapping[str, Charge], cluster: ClusterState, now: float
    ) -> JobView | None:
        members = self.pods_of(jid)
        if not members or any(p.uid not in charges for p in members):
            return None  # pods holding nothing (e.g. on a deleted node) are not running
        if any(charges[p.uid].node not in cluster.node_index for p in members):
            return None  # on a node that is gone: not running anywhere a policy can see
        try:
            return _running_view(jid, members, charges, cluster, self.encoder, now, self.dra)
        except ValueError:
            return None  # unreadable requests: the capacity is still counted


def _running_view(
    jid: str,
    members: list[PodRecord],
    charges: Mapping[str, Charge],
    cluster: ClusterState,
    encoder: GpuEncoder,
    now: float,
    dra: DraState | None = None,
) -> JobView:
    job = _pending_job(jid, members, {}, encoder, dra, as_new=True)
    tasks = tuple(
        TaskPlacement(charges[p.uid].node, charges[p.uid].gpus, charges[p.uid].gpu_milli)
        for p in members
    )
    placement = Placement(tasks)
    started = min(now if p.meta.bound_at is None else p.meta.bound_at for p in members)
    restarts = members[0].meta.restarts
    # A retraining window's progress, as the simulator's job has it (`done` before this
    # placement, none during its restart delay).
    done = work_done(members[0].annotations) if job.spec.kind == RETRAIN_KIND else 0.0
    return JobView(
        spec=job.spec,
        status=JobStatus.RUNNING,
        placement=placement,
        shape=allocation_shape(placement, cluster),
        attained_gpu_s=members[0].meta.attained_gpu_s,
        service_by_model=members[0].meta.attained_by_model,
        service_since=started,
        started_at=started,
        queued_since=job.spec.submit_time,
        restarts=restarts,
        done=done,
        restart_until=started + restart_delay(job.spec, restarts),
    )
