"""The ContinualTrainingJob reconciler: informers for the CTJs and their pods, a work
queue of CTJ keys, and the API writes that carry out `ctj_plan.plan`.

Level-triggered: a reconcile reads the current object and pods and acts on the
difference, whatever event woke it; timers wake it again at the next deadline or window
opening. Writes are safe to repeat or race:

* pods have deterministic names, so creating one twice answers 409 and changes nothing;
* deletes carry the pod's uid as a precondition;
* status goes through `/status` with the object's resourceVersion as a precondition,
  and is written *before* pods are cleaned up, so an outcome is never recorded twice;
* before recording an outcome or deleting pods the pods are re-listed from the API, so
  a pod that finished just before its deadline is not withdrawn on a lagging cache.

Deleting a CTJ removes its pods through their ownerReferences (the garbage collector);
pods whose owner is gone are also deleted here, for clusters where the collector lags.
Only the leader reconciles (`gate`), and the gate is checked again before each write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from controller.ctj.continual import ConfigChooser, JointConfigs, WindowsPlanner, serving_ends
from controller.ctj.crd import (
    API_VERSION,
    COLLECTION_PATH,
    KIND,
    NAME_LABEL,
    Ctj,
    CtjStatus,
    WindowOutcome,
    ctj_from_json,
    object_path,
)
from controller.ctj.plan import CtjPod, Plan, ctj_pod_from_json, plan
from controller.kube.informer import Informer
from controller.kube.kubeapi import ApiError, KubeApi
from controller.kube.objects import SCHEDULER_NAME, Problem
from controller.scheduling.effects import post_event
from controller.scheduling.quarantine import Quarantine
from controller.supervisor import Supervisor

log = logging.getLogger(__name__)

CTJS = "continualtrainingjobs"
CTJ_PODS = "ctj-pods"
REPORTING_CONTROLLER = "gpufleet.io/ctj-controller"
_REQUEUE_SLACK_S = 0.05
"""Wake a little after a deadline, so the deadline has passed by our clock too."""
_FAILURES = (aiohttp.ClientError, ApiError, OSError, TimeoutError)
_BROKEN_RETRY_S = 30.0
"""A CTJ whose reconcile fails for a reason other than the API is retried this late."""


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class CtjCache:
    """Informer handler for both kinds: CTJs by key, and their pods by CTJ key."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self.ctjs: dict[str, Ctj] = {}
        self.pods: dict[str, dict[str, CtjPod]] = {}
        self.on_change = on_change

    def replace(self, kind: str, objects: list[dict[str, Any]]) -> None:
        touched = set(self.ctjs) if kind == CTJS else set(self.pods)
        if kind == CTJS:
            self.ctjs = {c.key: c for c in map(ctj_from_json, objects)}
        else:
            self.pods = {}
            for obj in objects:
                self._put_pod(obj)
        for key in touched | (set(self.ctjs) if kind == CTJS else set(self.pods)):
            self.on_change(key)

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        if kind == CTJS:
            ctj = ctj_from_json(obj)
            if event == "DELETED":
                self.ctjs.pop(ctj.key, None)
            else:
                self.store(ctj)
            self.on_change(ctj.key)
            return
        key = self._put_pod(obj, deleted=event == "DELETED")
        if key is not None:
            self.on_change(key)

    def store(self, ctj: Ctj) -> None:
        """Keep `ctj` unless the cache already holds a newer version."""
        held = self.ctjs.get(ctj.key)
        if held is None or _version(ctj) >= _version(held):
            self.ctjs[ctj.key] = ctj

    def pods_of(self, key: str) -> list[CtjPod]:
        return list(self.pods.get(key, {}).values())

    def _put_pod(self, obj: dict[str, Any], deleted: bool = False) -> str | None:
        pod = ctj_pod_from_json(obj)
        name = (obj.get("metadata", {}).get("labels") or {}).get(NAME_LABEL)
        if pod is None or not name:
            return None
        key = _key(pod.namespace, name)
        pods = self.pods.setdefault(key, {})
        if deleted:
            pods.pop(pod.uid, None)
            if not pods:
                del self.pods[key]
        else:
            pods[pod.uid] = pod
        return key


def _version(ctj: Ctj) -> int:
    return int(ctj.raw.get("metadata", {}).get("resourceVersion") or 0)


class CtjReconciler:
    def __init__(
        self,
        api: KubeApi,
        scheduler_name: str = SCHEDULER_NAME,
        gate: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        instance: str = "gpufleet",
        resync_s: float = 300.0,
        supervisor: Supervisor | None = None,
        quarantine: Quarantine | None = None,
        plan_windows: WindowsPlanner | None = None,
    ) -> None:
        self.api = api
        self.supervisor = supervisor or Supervisor()
        self.quarantine = quarantine or Quarantine()
        self.scheduler_name = scheduler_name
        self.gate = gate
        self.clock = clock
        self.instance = instance
        self.cache = CtjCache(self.enqueue)
        self.choose: ConfigChooser | None = None
        """Picks an opening window's retraining config: the policy's `plan_windows` over
        every CTJ opening at that instant."""
        if plan_windows is not None:
            self.choose = JointConfigs(plan_windows, self.ctjs, self.cache.pods_of)
        self.ctj_informer = Informer(api, CTJS, COLLECTION_PATH, self.cache, None, resync_s)
        self.pod_informer = Informer(
            api, CTJ_PODS, "/api/v1/pods", self.cache, {"labelSelector": NAME_LABEL}, resync_s
        )
        self.on_gone: Callable[[str], None] = lambda _key: None
        """Called with the key of a CTJ that is deleted or whose last window has ended
        (its inference share is freed)."""
        self.on_result: Callable[[str], None] = lambda _result: None
        """Called with ok, conflict or error after each reconcile (metrics)."""
        self._queue: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    @property
    def synced(self) -> bool:
        return self.ctj_informer.synced.is_set() and self.pod_informer.synced.is_set()

    async def start_informers(self) -> None:
        """Start watching and wait for the first lists (standby replicas do this too,
        so a takeover starts from warm caches)."""
        self.supervisor.spawn("ctj-informer", self.ctj_informer.run())
        self.supervisor.spawn("ctj-pod-informer", self.pod_informer.run())
        await self.supervisor.until(self.ctj_informer.synced.wait())
        await self.supervisor.until(self.pod_informer.synced.wait())

    def start_reconciling(self) -> None:
        for key in [*self.cache.ctjs, *self.cache.pods]:
            self.enqueue(key)
        self.supervisor.spawn("ctj-reconciler", self._work())

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        await self.supervisor.stop(["ctj-reconciler", "ctj-pod-informer", "ctj-informer"])

    def enqueue(self, key: str) -> None:
        self._queue[key] = None
        self._wake.set()

    def ctjs(self) -> Iterable[Ctj]:
        return self.cache.ctjs.values()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                key = next(iter(self._queue))
                del self._queue[key]
                await self._reconcile_guarded(key)

    async def _reconcile_guarded(self, key: str) -> None:
        try:
            result = await self.reconcile(key)
        except _FAILURES as err:
            log.warning("reconcile %s failed (%s); retrying in 1s", key, err)
            self._requeue(key, self.clock() + 1.0)
            result = "error"
        except Exception as err:  # one CTJ's failure must not stop the others' reconciles
            log.exception("reconcile %s failed unexpectedly", key)
            ctj = self.cache.ctjs.get(key)
            uid = ctj.uid if ctj is not None else key
            self.quarantine.reject(KIND, key, uid, Problem("reconcile", repr(err)))
            self._requeue(key, self.clock() + _BROKEN_RETRY_S)
            result = "error"
        self.on_result(result)

    async def reconcile(self, key: str) -> str:
        """One pass over one CTJ; returns ok or conflict."""
        if not self.gate():
            return "ok"
        ctj = self.cache.ctjs.get(key)
        if ctj is None or ctj.deleting:
            self.on_gone(key)
        if ctj is None:
            await self._delete_orphans(key)
            return "ok"
        if ctj.deleting:
            return "ok"
        now = self.clock()
        result = plan(ctj, self.cache.pods_of(key), now, self.scheduler_name, self.choose)
        if result.problem is not None:
            self.quarantine.reject(KIND, key, ctj.uid, result.problem)
        if result.recorded or result.delete:
            result = plan(ctj, await self._list_pods(ctj), now, self.scheduler_name, self.choose)
        if not await self._write_status(ctj, result.status):
            return "conflict"
        await self._carry_out(ctj, result)
        requeue_at = result.requeue_at
        ends = serving_ends(result.status)
        if ends is not None and ends <= now:
            self.on_gone(key)
        elif ends is not None:
            requeue_at = ends
        if requeue_at is not None:
            self._requeue(key, requeue_at + _REQUEUE_SLACK_S)
        return "ok"

    async def _carry_out(self, ctj: Ctj, result: Plan) -> None:
        for outcome in result.recorded:
            _log_outcome(ctj, outcome)
            await self._event(ctj, outcome)
        for pod in result.create:
            if not self.gate():
                return
            status, answer = await self.api.request(
                "POST", f"/api/v1/namespaces/{ctj.namespace}/pods", body=pod
            )
            if status not in (201, 409):
                raise ApiError(status, answer, f"create pod {pod['metadata']['name']}")
            if status == 201:
                log.info("%s: created pod %s", ctj.key, pod["metadata"]["name"])
        for gone in result.delete:
            if not self.gate():
                return
            await self._delete_pod(gone)

    async def _write_status(self, ctj: Ctj, status: CtjStatus) -> bool:
        """PUT the status if it changed; False on a conflict (a newer object exists)."""
        if status.to_json() == (ctj.raw.get("status") or {}) or not self.gate():
            return True
        body = {**ctj.raw, "status": status.to_json()}
        path = object_path(ctj.namespace, ctj.name) + "/status"
        code, answer = await self.api.request("PUT", path, body=body)
        if code == 200:
            self.cache.store(ctj_from_json(answer))
            return True
        if code in (404, 409):
            log.info("%s: status write %d; re-reading", ctj.key, code)
            await self._refresh(ctj)
            return False
        raise ApiError(code, answer, f"PUT {path}")

    async def _refresh(self, ctj: Ctj) -> None:
        code, answer = await self.api.request("GET", object_path(ctj.namespace, ctj.name))
        if code == 200:
            self.cache.store(ctj_from_json(answer))
            self.enqueue(ctj.key)
        elif code == 404:
            self.cache.ctjs.pop(ctj.key, None)

    async def _list_pods(self, ctj: Ctj) -> list[CtjPod]:
        selector = {"labelSelector": f"{NAME_LABEL}={ctj.name}"}
        items, _ = await self.api.list_all(f"/api/v1/namespaces/{ctj.namespace}/pods", selector)
        return [p for p in map(ctj_pod_from_json, items) if p is not None]

    async def _delete_pod(self, pod: CtjPod) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": pod.uid}}
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
        status, answer = await self.api.request("DELETE", path, body=body)
        if status not in (200, 202, 404, 409):
            raise ApiError(status, answer, f"delete pod {pod.name}")
        if status in (200, 202):
            log.info("deleted pod %s/%s (window %d)", pod.namespace, pod.name, pod.window)

    async def _delete_orphans(self, key: str) -> None:
        """Pods whose owning CTJ no longer exists (checked against the API, not the cache)."""
        pods = [p for p in self.cache.pods_of(key) if p.owner_uid and not p.deleting]
        if not pods or not self.synced:
            return
        namespace, name = key.split("/", 1)
        status, answer = await self.api.request("GET", object_path(namespace, name))
        alive = answer["metadata"]["uid"] if status == 200 else None
        for pod in pods:
            if pod.owner_uid != alive and self.gate():
                await self._delete_pod(pod)

    async def _event(self, ctj: Ctj, outcome: WindowOutcome) -> None:
        reason = "RetrainCompleted" if outcome.completed else "DeadlineMissed"
        note = f"window {outcome.index}: {outcome.reason}"
        kind = "Normal" if outcome.completed else "Warning"
        regarding = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "namespace": ctj.namespace,
            "name": ctj.name,
            "uid": ctj.uid,
        }
        reporter = (REPORTING_CONTROLLER, self.instance)
        await post_event(
            self.api, reporter, regarding, "Retraining", reason, note, kind, self.clock()
        )

    def _requeue(self, key: str, at: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, at - self.clock())
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self.enqueue, key)


def _log_outcome(ctj: Ctj, outcome: WindowOutcome) -> None:
    fields: Mapping[str, Any] = {
        "ctj": ctj.key,
        "window": outcome.index,
        "outcome": outcome.outcome,
        "reason": outcome.reason,
    }
    if outcome.completed:
        log.info("%s: window %d retrained in time", ctj.key, outcome.index, extra=fields)
    else:
        log.warning(
            "%s: window %d missed its deadline (%s)",
            ctj.key,
            outcome.index,
            outcome.reason,
            extra=fields,
        )
