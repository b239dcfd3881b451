"""The scheduler's writes to the API server: bind, report unschedulable, evict.

Binding is a raw POST to the `binding` subresource carrying the pod's uid as a
precondition (a recreated pod with the same name is never bound by mistake) and the GPU
assignment as annotations, which the server merges into the pod in the same update that
sets `spec.nodeName`. The HTTP status is judged here, not by a typed client.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp

from controller.kube.kubeapi import STRATEGIC_MERGE_PATCH, ApiError, KubeApi
from controller.kube.objects import (
    ASSIGNED_GPUS,
    ASSIGNED_MILLI,
    ATTAINED_BY_MODEL,
    ATTAINED_GPU_S,
    BOUND_AT,
    DOMAIN,
    JOB_ID,
    RESTARTS,
    SUBMIT_TIME,
    PodRecord,
)
from controller.scheduling.growth import added_pod

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = f"{DOMAIN}/scheduler"
# Annotations that describe one placement; a recreated pod must not inherit them.
_PLACEMENT_ANNOTATION = re.compile(
    rf"^({re.escape(DOMAIN)}/(assigned-|bound-at)|hami\.io/|ALIYUN_COM_)"
)
_RESTART_SUFFIX = re.compile(r"-r[0-9]+$")


class BindOutcome(enum.Enum):
    BOUND = "bound"
    CONFLICT = "conflict"
    """409: already bound, terminating, gated, or the uid no longer matches."""
    GONE = "gone"
    RETRY = "retry"
    """5xx or a transport error: the pod may or may not be bound; re-read it."""


def now_rfc3339(now: float, micro: bool = False) -> str:
    stamp = datetime.fromtimestamp(now, UTC)
    if micro:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def placement_annotations(gpus: tuple[int, ...], milli: int, now: float) -> dict[str, str]:
    return {
        ASSIGNED_GPUS: ",".join(str(g) for g in gpus),
        ASSIGNED_MILLI: str(milli if gpus else 0),
        BOUND_AT: f"{now:.3f}",
    }


class ApiEffects:
    def __init__(self, api: KubeApi, instance: str = "gpufleet") -> None:
        self.api = api
        self.instance = instance

    async def bind(self, pod: PodRecord, node: str, annotations: dict[str, str]) -> BindOutcome:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod.name, "uid": pod.uid, "annotations": annotations},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/binding"
        try:
            status, answer = await self.api.request("POST", path, body=body)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            log.warning("bind %s → %s: no answer (%s)", pod.key, node, err)
            return BindOutcome.RETRY
        if 200 <= status < 300:
            return BindOutcome.BOUND
        message = answer.get("message", "") if isinstance(answer, dict) else ""
        log.info("bind %s → %s: HTTP %d %s", pod.key, node, status, message)
        if status == 409:
            return BindOutcome.CONFLICT
        if status == 404:
            return BindOutcome.GONE
        return BindOutcome.RETRY

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self.api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return body if status == 200 else None

    async def mark_unschedulable(self, pod: PodRecord, message: str, now: float) -> None:
        """`PodScheduled=False, reason=Unschedulable` plus an Event, as kube-scheduler does."""
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": now_rfc3339(now),
        }
        await self.api.request(
            "PATCH",
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
            body={"status": {"conditions": [condition]}},
            content_type=STRATEGIC_MERGE_PATCH,
        )
        await self.event(pod, "FailedScheduling", message, "Warning", now)

    async def event(self, pod: PodRecord, reason: str, note: str, kind: str, now: float) -> None:
        regarding = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": pod.namespace,
            "name": pod.name,
            "uid": pod.uid,
        }
        reporter = (REPORTING_CONTROLLER, self.instance)
        await post_event(self.api, reporter, regarding, "Scheduling", reason, note, kind, now)

    async def evict_and_recreate(
        self,
        pod: PodRecord,
        job_id: str,
        attained_gpu_s: float,
        submit_time: float,
        by_model: Mapping[str, float],
    ) -> str | None:
        """Delete the pod (uid precondition, no grace) and create an unbound copy that
        carries the job's identity, submit time, service so far (in all and `by_model`)
        and restart count.
        Returns the new pod's name, or None if the pod was already gone (or its copy
        already made). A pod with a controlling owner (a ContinualTrainingJob, a Job, a
        ReplicaSet) is only deleted, and "" returned: its owner recreates it, and a copy
        of ours beside the owner's would make the job one pod too large."""
        current = await self.read_pod(pod.namespace, pod.name)
        if current is None or current["metadata"]["uid"] != pod.uid:
            return None
        status, answer = await self.api.request(
            "DELETE",
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
            body={
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": pod.uid},
            },
        )
        if status == 404 or status == 409:
            return None
        if status >= 300:
            log.warning("evict %s: HTTP %d %s", pod.key, status, answer)
            return None
        if _has_controller(current):
            return ""
        copy = recreated_pod(current, job_id, attained_gpu_s, submit_time, by_model)
        path = f"/api/v1/namespaces/{pod.namespace}/pods"
        status, answer = await self.api.request("POST", path, body=copy)
        if status == 409:  # a concurrent eviction of the same pod made the copy already
            return None
        if status >= 300:
            raise ApiError(status, answer, f"recreate {copy['metadata']['name']}")
        return str(copy["metadata"]["name"])

    async def add_pods(self, pod: PodRecord, names: Sequence[str]) -> int:
        """Create unbound copies of `pod` named `names` (pods added to its elastic job,
        `controller.scheduling.growth`); returns how many were created. A name still
        taken (by a pod being deleted, or one an earlier pass added) is not created: the
        caller asks again on a later pass."""
        current = await self.read_pod(pod.namespace, pod.name)
        if current is None or current["metadata"]["uid"] != pod.uid:
            return 0
        inherited = (current["metadata"].get("annotations") or {}).items()
        annotations = {k: v for k, v in inherited if not _PLACEMENT_ANNOTATION.match(k)}
        path = f"/api/v1/namespaces/{pod.namespace}/pods"
        created = 0
        for name in names:
            status, answer = await self.api.request(
                "POST", path, body=added_pod(current, name, annotations)
            )
            if status >= 300:
                if status != 409:
                    log.warning("add %s/%s: HTTP %d %s", pod.namespace, name, status, answer)
                continue
            created += 1
        return created


def _has_controller(pod: Mapping[str, Any]) -> bool:
    owners = pod["metadata"].get("ownerReferences") or ()
    return any(owner.get("controller") for owner in owners)


def recreated_pod(
    pod: dict[str, Any],
    job_id: str,
    attained_gpu_s: float,
    submit_time: float,
    by_model: Mapping[str, float],
) -> dict[str, Any]:
    """An unbound copy of `pod` under a new name (`<name>-r<restarts>`)."""
    meta = pod["metadata"]
    inherited = (meta.get("annotations") or {}).items()
    annotations = {k: v for k, v in inherited if not _PLACEMENT_ANNOTATION.match(k)}
    restarts = int(annotations.get(RESTARTS, "0")) + 1
    annotations.update(
        {
            JOB_ID: job_id,
            SUBMIT_TIME: f"{submit_time:.3f}",
            ATTAINED_GPU_S: f"{attained_gpu_s:.3f}",
            ATTAINED_BY_MODEL: json.dumps(dict(by_model), sort_keys=True),
            RESTARTS: str(restarts),
        }
    )
    spec = {k: v for k, v in pod["spec"].items() if k != "nodeName"}
    base = _RESTART_SUFFIX.sub("", meta["name"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{base}-r{restarts}",
            "namespace": meta.get("namespace", "default"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": annotations,
            "ownerReferences": meta.get("ownerReferences") or [],
        },
        "spec": spec,
    }


async def post_event(
    api: KubeApi,
    reporter: tuple[str, str],
    regarding: Mapping[str, str],
    action: str,
    reason: str,
    note: str,
    kind: str,
    now: float,
) -> None:
    """Record an `events.k8s.io/v1` Event about `regarding` (apiVersion, kind, namespace,
    name, uid); `reporter` is (reporting controller, instance). A failure is logged, not
    raised: an Event is a courtesy to the operator, never a reason to stop."""
    namespace, name = regarding["namespace"], regarding["name"]
    controller, instance = reporter
    body = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}-", "namespace": namespace},
        "eventTime": now_rfc3339(now, micro=True),
        "reportingController": controller,
        "reportingInstance": instance,
        "action": action,
        "reason": reason,
        "note": note[:1024],
        "type": kind,
        "regarding": dict(regarding),
    }
    status, answer = await api.request(
        "POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", body=body
    )
    if status >= 300:
        log.warning("event for %s/%s not recorded: HTTP %d %s", namespace, name, status, answer)
