"""The claim writes kube-scheduler's DynamicResources plugin makes before it binds a
pod, in its order, each with the claim's resourceVersion as precondition:

1. PUT the claim with the `resource.kubernetes.io/delete-protection` finalizer, if it
   lacks it (without it kube-controller-manager would never deallocate the claim);
2. PUT `…/status` with the allocation (devices, node selector, allocationTimestamp) and
   the pod appended to `reservedFor`; for a claim already allocated (shared, or by
   another scheduler) only the reservation is appended.

A 409 means the claim changed: it is read again and re-checked (being deleted? allocated
meanwhile, by someone else?) before the next try. A claim allocated by another writer
first ends the attempt: the pod is planned again on the next pass and then follows that
allocation. If a later step fails (another claim, the bind), `unreserve` takes the pod
out of `reservedFor` again and clears an allocation this scheduler made that no pod
holds any more, as kube-scheduler's Unreserve and PostFilter do.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from controller.dra.inventory import ClaimAllocation
from controller.dra.objects import DELETE_PROTECTION, AllocatedDevice, node_selector_for
from controller.kube.kubeapi import STRATEGIC_MERGE_PATCH, KubeApi
from controller.kube.objects import PodRecord
from controller.scheduling.effects import now_rfc3339

log = logging.getLogger(__name__)

CLAIMS_PATH = "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}"
MAX_RESERVATIONS = 256
TRIES = 5


class ClaimOutcome(enum.Enum):
    RESERVED = "reserved"
    CONFLICT = "conflict"
    """Allocated elsewhere meanwhile, being deleted, or full: plan the pod again."""
    GONE = "gone"
    RETRY = "retry"
    """No answer or a server error: nothing is known to be written; plan again."""


class ClaimWriter:
    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.before_write: Callable[[ClaimAllocation], Awaitable[None]] | None = None
        """Run before each status write, if set: tests stage a second writer's race
        here (the real server then answers gpufleet's write with a conflict)."""

    async def reserve(
        self, pod: PodRecord, allocations: Sequence[ClaimAllocation], now: float
    ) -> tuple[ClaimOutcome, list[ClaimAllocation]]:
        """Write every claim's allocation and reservation for `pod`, in order. Returns
        the outcome and the claims written so far (to unreserve if anything fails)."""
        done: list[ClaimAllocation] = []
        for planned in allocations:
            try:
                outcome = await self._reserve_one(pod, planned, now)
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                log.warning("claim %s for %s: no answer (%s)", planned.claim.key, pod.key, err)
                outcome = ClaimOutcome.RETRY
            if outcome is not ClaimOutcome.RESERVED:
                return outcome, done
            done.append(planned)
        return ClaimOutcome.RESERVED, done

    async def _reserve_one(
        self, pod: PodRecord, planned: ClaimAllocation, now: float
    ) -> ClaimOutcome:
        path = CLAIMS_PATH.format(namespace=planned.claim.namespace, name=planned.claim.name)
        for _ in range(TRIES):
            status, claim = await self.api.request("GET", path)
            if status == 404 or (status == 200 and claim["metadata"]["uid"] != planned.claim.uid):
                return ClaimOutcome.GONE
            if status != 200:
                return ClaimOutcome.RETRY
            why = _refusal(claim, pod, planned)
            if why:
                log.info("claim %s for %s: %s", planned.claim.key, pod.key, why)
                return ClaimOutcome.CONFLICT
            if _reserved_for(claim, pod.uid):
                return ClaimOutcome.RESERVED
            finalizers = claim["metadata"].get("finalizers") or []
            if planned.results is not None and DELETE_PROTECTION not in finalizers:
                claim["metadata"]["finalizers"] = [*finalizers, DELETE_PROTECTION]
                status, claim = await self.api.request("PUT", path, body=claim)
                if status == 409:
                    continue
                if status >= 300:
                    return _failed(status)
            if self.before_write is not None:
                await self.before_write(planned)
            _write_status(claim, pod, planned, now)
            status, answer = await self.api.request("PUT", f"{path}/status", body=claim)
            if status == 409:
                continue
            if status >= 300:
                log.warning("claim %s status: HTTP %d %s", planned.claim.key, status, answer)
                return _failed(status)
            return ClaimOutcome.RESERVED
        return ClaimOutcome.CONFLICT

    async def unreserve(self, pod: PodRecord, written: Sequence[ClaimAllocation]) -> None:
        """Take `pod` out of the claims' `reservedFor`; clear the allocations this
        scheduler made that no other pod holds now."""
        for planned in written:
            path = CLAIMS_PATH.format(namespace=planned.claim.namespace, name=planned.claim.name)
            patch = {
                "metadata": {"uid": planned.claim.uid},
                "status": {"reservedFor": [{"$patch": "delete", "uid": pod.uid}]},
            }
            try:
                status, claim = await self.api.request(
                    "PATCH", f"{path}/status", body=patch, content_type=STRATEGIC_MERGE_PATCH
                )
                if status == 200 and planned.results is not None:
                    await self._deallocate(path, claim)
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                log.warning("unreserve %s for %s: %s", planned.claim.key, pod.key, err)

    async def _deallocate(self, path: str, claim: dict[str, Any]) -> None:
        status = claim.get("status") or {}
        if status.get("reservedFor") or not status.get("allocation"):
            return
        claim["status"] = {k: v for k, v in status.items() if k not in ("allocation", "devices")}
        answer, _ = await self.api.request("PUT", f"{path}/status", body=claim)
        if answer >= 300:
            log.info(
                "deallocating %s: HTTP %d (it changed; its controller cleans up)", path, answer
            )


def _failed(status: int) -> ClaimOutcome:
    return ClaimOutcome.RETRY if status >= 500 else ClaimOutcome.CONFLICT


def _reserved_for(claim: dict[str, Any], uid: str) -> bool:
    return any(r.get("uid") == uid for r in (claim.get("status") or {}).get("reservedFor") or ())


def _refusal(claim: dict[str, Any], pod: PodRecord, planned: ClaimAllocation) -> str:
    """Why the claim as read now cannot take the planned write ("" if it can)."""
    if claim["metadata"].get("deletionTimestamp"):
        return "being deleted"
    status = claim.get("status") or {}
    allocated = status.get("allocation")
    if planned.results is not None and allocated and not _reserved_for(claim, pod.uid):
        return "allocated by another writer first"
    if planned.results is None and not allocated:
        return "its allocation was cleared meanwhile"
    if len(status.get("reservedFor") or ()) >= MAX_RESERVATIONS:
        return f"already reserved for {MAX_RESERVATIONS} consumers"
    return ""


def _write_status(
    claim: dict[str, Any], pod: PodRecord, planned: ClaimAllocation, now: float
) -> None:
    status = claim.setdefault("status", {})
    if planned.results is not None:
        devices: dict[str, Any] = {"results": [_result(r) for r in planned.results]}
        if planned.config:
            devices["config"] = [dict(c) for c in planned.config]
        status["allocation"] = {
            "devices": devices,
            "nodeSelector": node_selector_for(planned.node),
            "allocationTimestamp": now_rfc3339(now),
        }
    reservation = {"resource": "pods", "name": pod.name, "uid": pod.uid}
    status["reservedFor"] = [*(status.get("reservedFor") or []), reservation]


def _result(result: AllocatedDevice) -> dict[str, Any]:
    written: dict[str, Any] = {
        "request": result.request,
        "driver": result.driver,
        "pool": result.pool,
        "device": result.device,
    }
    if result.share_id:
        written["shareID"] = result.share_id
        written["consumedCapacity"] = {k: _quantity(v) for k, v in result.consumed.items()}
    return written


def _quantity(value: Any) -> str:
    """A Decimal as a plain quantity string (`21474836480`, `1500m`)."""
    if value == value.to_integral_value():
        return str(int(value))
    return f"{int(value * 1000)}m"
