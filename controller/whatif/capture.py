"""A live cluster as a `traces.snapshot.ClusterSnapshot`, the input of `gpufleet whatif`.

From the controller's own cache (`ClusterCache`, fed by its informers or by one LIST):
nodes; every pod holding resources, with what the cache charges it and how long it has
run (since our Binding's `bound-at`, else since its creation); our pending jobs as the
scheduler groups them (`build_workload`), with their age; and each ContinualTrainingJob's
windows opening within the horizon, with the durations of its completed windows. A LIST
also yields finished pods, whose run times form the duration history by shape.

Whatever the decoder sets aside (a pod with an unreadable annotation, a CTJ with an
invalid spec) is left out and named in the snapshot's `problems`; capture never raises
on a bad object.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.ctj.continual import ctj_clock, triggered
from controller.ctj.crd import COLLECTION_PATH, NAME_LABEL, WINDOW_DEADLINE, Ctj, ctj_from_json
from controller.kube.kubeapi import ApiError, KubeApi
from controller.kube.objects import (
    RUNTIME,
    PodRecord,
    cpu_milli,
    mem_mib,
    parse_duration,
    parse_time,
    pod_from_json,
)
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import GpuEncoder
from controller.scheduling.workload import DEFAULT_RUNTIME_S, build_workload, job_id, node_spec
from policies.windows import Window, WindowClock, windows_between
from traces.snapshot import (
    ClusterSnapshot,
    SnapCtj,
    SnapHistory,
    SnapNode,
    SnapPending,
    SnapRunning,
    SnapWindow,
)

MAX_WINDOWS = 1_000
"""Windows of one CTJ taken within the horizon (a one-minute cron gives 1,440 a day)."""


def capture(
    cache: ClusterCache,
    now: float,
    policy: str = "",
    ctjs: Iterable[Ctj] = (),
    horizon_s: float = 86_400.0,
    history: Sequence[SnapHistory] = (),
) -> ClusterSnapshot:
    """The snapshot of `cache` at `now` (Unix seconds)."""
    problems: list[str] = []
    nodes = [node_spec(n, cache.encoder) for n in sorted(cache.nodes.values(), key=_name)]
    snap_nodes = tuple(
        SnapNode(n.name, n.cpu_milli, n.mem_mib, n.gpus, n.product, n.rack) for n in nodes
    )
    workload = build_workload(cache.pending_pods(), cache.seq, cache.encoder)
    for rejected in workload.rejected:
        problems.append(f"job {rejected.job_id}: {rejected.problem}")
    pending = tuple(_pending(job.spec, job.pods, now) for job in workload.pending)
    snap_ctjs = []
    for ctj in ctjs:
        if ctj.problem is not None:
            problems.append(f"ContinualTrainingJob {ctj.key}: {ctj.problem}")
            continue
        try:
            snap_ctjs.append(_ctj(ctj, now, horizon_s))
        except ValueError as err:
            problems.append(f"ContinualTrainingJob {ctj.key}: {err}")
    return ClusterSnapshot(
        taken_at_unix=now,
        nodes=snap_nodes,
        running=_running(cache, now, {n.name for n in nodes}, problems),
        pending=pending,
        ctjs=tuple(snap_ctjs),
        history=tuple(history),
        policy=policy,
        default_runtime_s=DEFAULT_RUNTIME_S,
        problems=tuple(problems),
    )


def _name(node: Any) -> str:
    return str(node.name)


def _running(
    cache: ClusterCache, now: float, nodes: set[str], problems: list[str]
) -> tuple[SnapRunning, ...]:
    charges = cache.charges()
    pods = {uid: cache.pods[uid] for uid in charges if uid in cache.pods}
    members = Counter(job_id(p) for p in pods.values() if p.scheduler_name == cache.scheduler_name)
    out = []
    for uid, charge in sorted(charges.items(), key=lambda item: _started(pods.get(item[0]), now)):
        if charge.node not in nodes:
            problems.append(f"{uid}: holds resources on node {charge.node!r}, which is gone")
            continue
        pod = pods.get(uid)
        ours = pod is not None and pod.scheduler_name == cache.scheduler_name
        out.append(
            SnapRunning(
                id=f"{pod.namespace}/{pod.name}" if pod else uid,
                node=charge.node,
                cpu_milli=charge.cpu_milli,
                mem_mib=charge.mem_mib,
                num_gpus=len(charge.gpus),
                gpu_milli=charge.gpu_milli if charge.gpus else 0,
                elapsed_s=round(max(0.0, now - _started(pod, now)), 3),
                gpus=charge.gpus,
                runtime_s=pod.meta.runtime_s if pod else None,
                ctj=pod.labels.get(NAME_LABEL, "") if pod else "",
                job=job_id(pod) if ours and pod else "",
                replicas=members[job_id(pod)] if ours and pod else 1,
            )
        )
    return tuple(out)


def _started(pod: PodRecord | None, now: float) -> float:
    """When a pod began to hold its node: our Binding's record, else its creation."""
    if pod is None:
        return now
    return pod.meta.bound_at if pod.meta.bound_at is not None else pod.created


def _pending(spec: Any, pods: Sequence[PodRecord], now: float) -> SnapPending:
    deadline = pods[0].annotations.get(WINDOW_DEADLINE)
    try:
        deadline_s = float(deadline) - now if deadline else None
    except ValueError:
        deadline_s = None  # written by our own reconciler; unreadable means hand-edited
    return SnapPending(
        id=spec.id,
        age_s=round(max(0.0, now - spec.submit_time), 3),
        cpu_milli=spec.task.cpu_milli,
        mem_mib=spec.task.mem_mib,
        num_gpus=spec.task.num_gpus,
        gpu_milli=spec.task.gpu_milli,
        replicas=spec.replicas,
        allowed_models=tuple(sorted(spec.allowed_models or ())),
        priority=spec.priority,
        preemptible=spec.preemptible,
        runtime_s=pods[0].meta.runtime_s,
        ctj=pods[0].labels.get(NAME_LABEL, ""),
        deadline_s=deadline_s,
    )


def _ctj(ctj: Ctj, now: float, horizon_s: float) -> SnapCtj:
    spec = ctj.spec
    clock = ctj_clock(spec.retrain, ctj.created)
    declared = spec.pod_annotations.get(RUNTIME)
    return SnapCtj(
        name=ctj.name,
        replicas=spec.min_replicas,
        cpu_milli=cpu_milli(spec.cpu),
        mem_mib=mem_mib(spec.memory),
        num_gpus=spec.gpu.count,
        gpu_milli=spec.gpu.milli,
        allowed_models=tuple(sorted(spec.gpu_types)),
        runtime_s=parse_duration(declared) if declared else None,
        completed_window_s=_completed_windows(ctj, clock),
        windows=tuple(
            SnapWindow(w.index, round(w.start - now, 3), round(w.deadline - now, 3))
            for w in upcoming_windows(ctj, clock, now, now + horizon_s)
        ),
    )


def upcoming_windows(ctj: Ctj, clock: WindowClock, now: float, until: float) -> list[Window]:
    """The windows the reconciler will open after `now` and before `until` (those open
    now have their pods already, among the running and pending). A drift-triggered CTJ
    opens its next window when `triggered` fires it; the ones after are armed by that
    window's outcome, which only the forecast itself could tell."""
    limit = ctj.spec.retrain.windows
    if ctj.spec.retrain.trigger is None:
        return windows_between(clock, now, until, limit, MAX_WINDOWS)
    open_now, fires_at = triggered(ctj, clock.first_opening(), now)
    if open_now is not None or fires_at is None or fires_at >= until:
        return []
    window, _ = triggered(ctj, clock.first_opening(), fires_at)
    if window is None or (limit is not None and window.index >= limit):
        return []
    return [window]


def _completed_windows(ctj: Ctj, clock: WindowClock) -> tuple[float, ...]:
    """How long each completed window in the status took, from its opening to its
    finish (retraining time plus any wait for GPUs). A triggered window's opening is
    known only for the last one (`status.currentWindow`)."""
    out = []
    for outcome in ctj.status.history:
        if not outcome.completed or outcome.finished_at is None:
            continue
        if ctj.spec.retrain.trigger is None:
            window = clock.current(outcome.finished_at)
        else:
            window = ctj.status.current_window
        if window is not None and window.index == outcome.index:
            out.append(round(outcome.finished_at - window.start, 3))
    return tuple(d for d in out if d > 0)


# -- one LIST ------------------------------------------------------------------------


async def list_snapshot(
    api: KubeApi,
    encoder: GpuEncoder,
    scheduler_name: str,
    now: float,
    policy: str = "",
    horizon_s: float = 86_400.0,
) -> ClusterSnapshot:
    """Nodes, every pod (finished ones for the history) and the CTJs, listed once."""
    cache = ClusterCache(encoder, scheduler_name)
    nodes, _ = await api.list_all("/api/v1/nodes")
    pods, _ = await api.list_all("/api/v1/pods")
    cache.replace(NODES, nodes)
    cache.replace(PODS, pods)
    try:
        items, _ = await api.list_all(COLLECTION_PATH)
    except ApiError as err:
        if err.status != 404:
            raise
        items = []  # the CRD is not installed: no CTJs
    ctjs = [ctj_from_json(obj) for obj in items]
    return capture(cache, now, policy, ctjs, horizon_s, finished_history(pods, scheduler_name))


def finished_history(pods: Iterable[Mapping[str, Any]], scheduler_name: str) -> list[SnapHistory]:
    """Run times of our pods that succeeded (bound → finished), one entry per pod."""
    out = []
    for obj in pods:
        pod = pod_from_json(obj)
        if pod.phase != "Succeeded" or pod.scheduler_name != scheduler_name or pod.problems:
            continue
        finished = _finished_at(obj)
        started = pod.meta.bound_at
        if finished is None or started is None or finished <= started:
            continue
        num_gpus, milli = _held(pod)
        took = round(finished - started, 3)
        out.append(SnapHistory(pod.meta.gang_size or 1, num_gpus, milli, took, pod.meta.runtime_s))
    return out


def _held(pod: PodRecord) -> tuple[int, int]:
    gpus = pod.meta.assigned_gpus or ()
    return len(gpus), (pod.meta.assigned_milli if gpus else 0)


def _finished_at(obj: Mapping[str, Any]) -> float | None:
    ends = []
    for status in (obj.get("status") or {}).get("containerStatuses") or ():
        text = ((status.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if text:
            try:
                ends.append(parse_time(text))
            except ValueError:
                continue
    known = [t for t in ends if math.isfinite(t)]
    return max(known) if known else None


# -- a job to add ---------------------------------------------------------------------


def added_jobs(
    manifests: Sequence[Mapping[str, Any]], encoder: GpuEncoder, now: float
) -> list[SnapPending]:
    """The jobs that Pod manifests (as a user would submit them) make, arriving now;
    ValueError naming the pod and field when one cannot be scheduled as written."""
    objects = []
    for i, manifest in enumerate(manifests):
        if not isinstance(manifest, Mapping) or manifest.get("kind") != "Pod":
            raise ValueError(f"--add document {i + 1}: expected a Pod manifest (kind: Pod)")
        meta = dict(manifest.get("metadata") or {})
        if not meta.get("name"):
            raise ValueError(f"--add document {i + 1}: metadata.name is missing")
        meta.setdefault("namespace", "default")
        meta["uid"] = f"whatif-added-{i}"
        meta["creationTimestamp"] = now_rfc3339(now)
        objects.append({**manifest, "metadata": meta})
    pods = [pod_from_json(obj) for obj in objects]
    workload = build_workload(pods, {p.uid: i for i, p in enumerate(pods)}, encoder)
    for rejected in workload.rejected:
        raise ValueError(f"--add job {rejected.job_id}: {rejected.problem}")
    for jid, why in workload.waiting.items():
        raise ValueError(f"--add job {jid}: {why}")
    return [_pending(job.spec, job.pods, now) for job in workload.pending]
