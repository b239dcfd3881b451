"""Leader election over a `coordination.k8s.io/v1` Lease, so that of several replicas
exactly one schedules and reconciles.

The algorithm is client-go's, written over our raw client:

* A candidate GETs the Lease. It takes it (a PUT carrying the read resourceVersion, so
  of two racing candidates one gets 409) when it is free, already its own, or expired.
* Expiry is judged on the candidate's own monotonic clock: the holder's `renewTime` is
  only used to notice *that* the Lease changed. A Lease not seen to change for its
  `leaseDurationSeconds` is expired, whatever the clocks of other machines say.
* The leader renews every `retry_period_s`. Its authority ends `renew_deadline_s` after
  the start of its last successful renewal, checked on every `is_leader()` call, so a
  leader whose renewals fail or hang stops binding at once, without waiting for a
  renewal loop to notice. Since `renew_deadline_s < lease_duration_s`, it has stopped
  before any other replica may take over.
* A leader whose renewal missed the deadline only because its own process stalled
  (a paused VM, a long GC) tries once more, within one retry period, before it steps
  down: if the Lease is still its own (or free), nobody else has led since, and the
  PUT's resourceVersion precondition makes taking it back as safe as a fresh acquire.
  Without this, one stall longer than the deadline would restart a sole replica.
* On a clean shutdown the leader gives the Lease up (empty holder), so a standby takes
  over within one retry period instead of one lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from controller.kube.kubeapi import ApiError, KubeApi
from controller.scheduling.effects import now_rfc3339

log = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
_FAILURES = (aiohttp.ClientError, ApiError, OSError, TimeoutError)


def default_identity() -> str:
    """The pod's name (its hostname) plus a random suffix, unique per process."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """The namespace the pod runs in (downward API), else gpufleet-system."""
    return os.environ.get("POD_NAMESPACE", "gpufleet-system")


@dataclass(frozen=True)
class LeaseConfig:
    name: str = "gpufleet-controller"
    namespace: str = field(default_factory=default_namespace)
    identity: str = field(default_factory=default_identity)
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration_s > self.renew_deadline_s > self.retry_period_s > 0:
            raise ValueError("need lease duration > renew deadline > retry period > 0")

    @property
    def path(self) -> str:
        return f"{LEASES.format(namespace=self.namespace)}/{self.name}"


class LeadershipLostError(Exception):
    """The lease could not be renewed within the renew deadline."""


class LeaderElector:
    def __init__(
        self, api: KubeApi, config: LeaseConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self._valid_until = float("-inf")
        self._observed_version = ""
        self._observed_at = 0.0

    def is_leader(self) -> bool:
        return self.clock() < self._valid_until

    async def acquire(self) -> None:
        """Until this replica holds the lease."""
        while not await self._attempt(self.config.renew_deadline_s):
            await asyncio.sleep(self.config.retry_period_s)
        log.info("leader election: %s now leads (%s)", self.config.identity, self.config.path)

    async def hold(self) -> None:
        """Renew the lease until renewals fail past the deadline and one last attempt
        fails too; then raise `LeadershipLostError` (by then `is_leader()` is already
        False)."""
        while True:
            await asyncio.sleep(self.config.retry_period_s)
            while not await self._attempt(max(0.0, self._valid_until - self.clock())):
                if not self.is_leader():
                    await self._take_back_or_step_down()
                    break
                await asyncio.sleep(self.config.retry_period_s / 4)

    async def _take_back_or_step_down(self) -> None:
        """Past the renew deadline (so binding has stopped): one last attempt, bounded by
        the retry period; raise `LeadershipLostError` if it fails."""
        late_s = self.clock() - self._valid_until
        who = self.config.identity
        if await self._attempt(self.config.retry_period_s):
            log.warning(
                "leader election: %s renewed %.1f s past its deadline; leading", who, late_s
            )
            return
        log.error("leader election: %s could not renew; stepping down", who)
        raise LeadershipLostError(self.config.path)

    async def release(self) -> None:
        """Stop leading now and hand the lease over (empty holder), if it is ours."""
        if not self.is_leader():
            return
        self._valid_until = float("-inf")
        try:
            status, lease = await self.api.request("GET", self.config.path)
            if status != 200 or _spec(lease).get("holderIdentity") != self.config.identity:
                return
            spec = {**_spec(lease), "holderIdentity": "", "leaseDurationSeconds": 1}
            status, _ = await self.api.request(
                "PUT", self.config.path, body={**lease, "spec": spec}
            )
        except _FAILURES as err:
            log.warning("leader election: releasing the lease failed (%s)", err)
            return
        log.info("leader election: %s released the lease (HTTP %d)", self.config.identity, status)

    async def _attempt(self, timeout_s: float) -> bool:
        """One try to take or renew the lease, bounded by `timeout_s`."""
        started = self.clock()
        try:
            won = await asyncio.wait_for(self._take_or_renew(), max(timeout_s, 0.01))
        except _FAILURES as err:
            log.warning("leader election: lease %s not reachable (%s)", self.config.path, err)
            return False
        if won:
            self._valid_until = started + self.config.renew_deadline_s
        return won

    async def _take_or_renew(self) -> bool:
        status, lease = await self.api.request("GET", self.config.path)
        if status == 404:
            return await self._create()
        if status != 200:
            raise ApiError(status, lease, f"GET {self.config.path}")
        self._observe(lease)
        spec = _spec(lease)
        holder = spec.get("holderIdentity") or ""
        ours = holder == self.config.identity
        if holder and not ours and not self._expired(spec):
            return False
        status, _ = await self.api.request(
            "PUT", self.config.path, body={**lease, "spec": self._spec(spec, ours)}
        )
        if status == 409:
            return False  # someone else wrote it since we read it
        if status != 200:
            raise ApiError(status, None, f"PUT {self.config.path}")
        return True

    async def _create(self) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": self._spec({}, ours=False),
        }
        path = LEASES.format(namespace=self.config.namespace)
        status, answer = await self.api.request("POST", path, body=body)
        if status == 409:
            return False  # another candidate created it first
        if status >= 300:
            raise ApiError(status, answer, f"POST {path}")
        return True

    def _spec(self, old: dict[str, Any], ours: bool) -> dict[str, Any]:
        now = now_rfc3339(time.time(), micro=True)
        transitions = int(old.get("leaseTransitions", 0))
        return {
            "holderIdentity": self.config.identity,
            # Whole seconds in the API: round up, never advertise less than we assume.
            "leaseDurationSeconds": max(1, math.ceil(self.config.lease_duration_s)),
            "acquireTime": old.get("acquireTime", now) if ours else now,
            "renewTime": now,
            "leaseTransitions": transitions if ours or not old else transitions + 1,
        }

    def _observe(self, lease: dict[str, Any]) -> None:
        version = str(lease.get("metadata", {}).get("resourceVersion", ""))
        if version != self._observed_version:
            self._observed_version = version
            self._observed_at = self.clock()

    def _expired(self, spec: dict[str, Any]) -> bool:
        duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration_s)
        return self.clock() >= self._observed_at + duration


def _spec(lease: Any) -> dict[str, Any]:
    return dict(lease.get("spec") or {}) if isinstance(lease, dict) else {}
