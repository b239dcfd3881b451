"""Leader election logic against a minimal in-memory Lease endpoint (resourceVersion
preconditions only). The real-apiserver behaviour is tests/kube/test_ctj_leader.py;
these pin down what is hard to provoke there: expiry judged on the candidate's own
clock whatever the holder's `renewTime` says, and a hung renewal closing the gate.

Timing asserts only what load cannot break (the machine is small and shared): lower
bounds, the order of events on one event loop, and outcomes; upper bounds are generous
time limits that fail a hang, not a slow scheduler."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest

from controller.kube.leader import LeaderElector, LeadershipLostError, LeaseConfig


class LeaseEndpoint:
    """GET/POST/PUT of one Lease; PUT with a stale resourceVersion answers 409.
    Requests from identities in `hung` never return."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.hung: set[str] = set()
        self.latency_s = latency_s

    def client(self, identity: str) -> Any:
        endpoint = self

        class Client:
            async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
                if identity in endpoint.hung:
                    await asyncio.Event().wait()
                await asyncio.sleep(endpoint.latency_s)
                return endpoint.handle(method, kw.get("body"))

        return Client()

    def handle(self, method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return (200, copy.deepcopy(self.lease)) if self.lease else (404, {})
        if method == "POST" and self.lease is not None:
            return 409, {}
        if method == "PUT" and body["metadata"]["resourceVersion"] != str(self.version):
            return 409, {}
        self.version += 1
        self.lease = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
        }
        return 200 if method == "PUT" else 201, copy.deepcopy(self.lease)


class SteppedClock:
    """The monotonic clock, plus the time a stalled process did not see pass."""

    def __init__(self) -> None:
        self.stalled_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.stalled_s


def elector(
    endpoint: LeaseEndpoint,
    identity: str,
    lease_s: float = 1.0,
    clock: SteppedClock | None = None,
) -> LeaderElector:
    config = LeaseConfig(
        namespace="ns",
        identity=identity,
        lease_duration_s=lease_s,
        renew_deadline_s=0.4,
        retry_period_s=0.05,
    )
    return LeaderElector(endpoint.client(identity), config, clock or SteppedClock())


def test_a_held_lease_is_taken_only_after_the_candidate_saw_it_unchanged_for_its_duration() -> None:
    async def scenario() -> None:
        endpoint = LeaseEndpoint()
        a, b = elector(endpoint, "a"), elector(endpoint, "b")
        await a.acquire()
        assert endpoint.lease is not None
        # The holder's clock says it renewed long ago: irrelevant to b, which has only
        # just seen the lease.
        endpoint.lease["spec"]["renewTime"] = "2000-01-01T00:00:00.000000Z"
        endpoint.hung.add("a")  # a stops renewing from now on
        started = time.monotonic()
        await asyncio.wait_for(b.acquire(), 10)
        # b waited out the whole lease duration from its first sight of the lease.
        assert time.monotonic() - started >= 1.0
        assert endpoint.lease["spec"]["holderIdentity"] == "b"
        assert endpoint.lease["spec"]["leaseTransitions"] == 1

    asyncio.run(scenario())


def test_a_hung_renewal_closes_the_gate_before_a_standby_can_lead_and_hold_raises() -> None:
    async def scenario() -> None:
        endpoint = LeaseEndpoint()
        a, b = elector(endpoint, "a"), elector(endpoint, "b")
        await a.acquire()
        holding = asyncio.create_task(a.hold())
        await asyncio.sleep(0.2)
        assert a.is_leader()
        endpoint.hung.add("a")
        await asyncio.wait_for(b.acquire(), 10)
        # The gate is a deadline on a's own clock (renew deadline < lease duration), so
        # by the time the standby leads, the hung leader can bind nothing.
        assert b.is_leader() and not a.is_leader()
        with pytest.raises(LeadershipLostError, match="/leases/"):
            await asyncio.wait_for(holding, 10)

    asyncio.run(scenario())


async def leading_with_slow_requests(
    clock: SteppedClock,
) -> tuple[LeaseEndpoint, LeaderElector, asyncio.Task[None]]:
    """a leads and renews over an endpoint whose requests take 20 ms: longer than the
    10 ms a renewal gets once the deadline has passed, as after a real stall. Returns
    the endpoint, a and its `hold()` task."""
    endpoint = LeaseEndpoint(latency_s=0.02)
    a = elector(endpoint, "a", clock=clock)
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    await asyncio.sleep(0.2)
    return endpoint, a, holding


def test_a_leader_that_stalled_past_its_deadline_takes_back_the_lease_nobody_touched() -> None:
    async def scenario() -> None:
        clock = SteppedClock()
        endpoint, a, holding = await leading_with_slow_requests(clock)
        renewed = endpoint.version
        clock.stalled_s = 1.0  # the process froze past the 0.4 s deadline
        assert not a.is_leader()  # so it binds nothing until it has renewed
        deadline = time.monotonic() + 10
        while not a.is_leader() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert a.is_leader() and not holding.done()
        assert endpoint.lease is not None
        assert endpoint.lease["spec"]["holderIdentity"] == "a"
        assert endpoint.version > renewed
        holding.cancel()

    asyncio.run(scenario())


def test_a_leader_that_stalled_while_another_took_the_lease_steps_down() -> None:
    async def scenario() -> None:
        clock = SteppedClock()
        endpoint, a, holding = await leading_with_slow_requests(clock)
        # While a was frozen, b saw the lease unchanged for its duration and took it.
        assert endpoint.lease is not None
        taken = copy.deepcopy(endpoint.lease)
        taken["spec"]["holderIdentity"] = "b"
        assert endpoint.handle("PUT", taken)[0] == 200
        clock.stalled_s = 1.0
        with pytest.raises(LeadershipLostError, match="/leases/"):
            await asyncio.wait_for(holding, 10)
        assert not a.is_leader()
        assert endpoint.lease is not None
        assert endpoint.lease["spec"]["holderIdentity"] == "b"

    asyncio.run(scenario())


def test_release_hands_the_lease_to_a_waiting_candidate_at_once() -> None:
    async def scenario() -> None:
        endpoint = LeaseEndpoint()
        a, b = elector(endpoint, "a", lease_s=30.0), elector(endpoint, "b", lease_s=30.0)
        await a.acquire()
        waiting = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.1)
        await a.release()
        assert not a.is_leader()
        # Long before the 30 s lease could expire: the release handed it over.
        await asyncio.wait_for(waiting, 10)
        assert b.is_leader()

    asyncio.run(scenario())


def test_lease_timings_must_nest() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        LeaseConfig(lease_duration_s=10, renew_deadline_s=10, retry_period_s=2)
