"""High availability on the real API server: replicas of the controller (each with its
own connection, as the ServiceAccount) elect a leader through a Lease.

* While one leads, the standby binds nothing.
* The leader stopped cleanly hands the lease over without letting it expire.
* The leader cut off from the API server (it cannot renew) closes its bind gate
  *before* the standby takes over, and the standby takes over.
* Over all of it, no pod is bound twice and no GPU is handed out twice, and a
  ContinualTrainingJob keeps being reconciled without counting a window twice.

Timings are asserted as order and outcome (the machine is small and shared): a clean
handover beats the lease expiry it would otherwise wait for, the cut-off leader's gate
shuts before the standby leads; time limits are generous and only catch hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from controller.devcluster.fleet import Admin, pod_manifest
from controller.devcluster.install import SYSTEM_NAMESPACE
from controller.kube.leader import LeadershipLostError, LeaseConfig
from controller.kube.objects import ASSIGNED_GPUS
from controller.manager import Manager, ManagerOptions
from controller.scheduling.scheduler import BindRecord
from policies import NodeSpec, TaskRequest, make_policy
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    get_ctj,
    run,
)
from tests.kube.helpers import eventually
from tests.kube.proxy import CuttableProxy

pytestmark = pytest.mark.kube

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.5
ONE_GPU = TaskRequest(cpu_milli=1000, mem_mib=1024, num_gpus=1, gpu_milli=1000)


class Replica:
    """One controller replica running in this event loop."""

    def __init__(self, env: CtjEnvironment, identity: str, server: str = "") -> None:
        self.api = env.sa_api(server)
        lease = LeaseConfig(
            namespace=SYSTEM_NAMESPACE,
            identity=identity,
            lease_duration_s=LEASE_S,
            renew_deadline_s=RENEW_S,
            retry_period_s=RETRY_S,
        )
        options = ManagerOptions(lease=lease, probe_port=None)
        self.manager = Manager(self.api, make_policy("bestfit"), options)
        self.binds: list[BindRecord] = []
        self.manager.controller.scheduler.on_bound = self._bound(self.manager)
        self.task: asyncio.Task[None] | None = None

    def _bound(self, manager: Manager) -> Callable[[BindRecord], None]:
        previous = manager.controller.scheduler.on_bound

        def record(bind: BindRecord) -> None:
            previous(bind)
            self.binds.append(bind)

        return record

    async def start(self) -> None:
        self.task = asyncio.create_task(self.manager.run())
        await asyncio.wait_for(self.manager.synced.wait(), 30)

    async def stop(self) -> None:
        """Cancel the replica if it still runs, and close its API session either way (a
        replica that lost the lease has stopped by itself, but its session is open)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeadershipLostError):
                await self.task
        await self.api.close()

    @property
    def conflicts(self) -> int:
        return self.manager.controller.scheduler.stats.conflicts


async def leading_within(replica: Replica, seconds: float) -> float:
    """Seconds until `replica` leads (fails after `seconds`)."""
    started = time.monotonic()
    await asyncio.wait_for(replica.manager.leading.wait(), seconds)
    return time.monotonic() - started


async def gate_closes(replica: Replica) -> float:
    """Wall time at which `replica` stops being the leader."""
    while replica.manager.is_leader():
        await asyncio.sleep(0.01)
    return time.time()


async def create_pods(admin: Admin, names: list[str]) -> None:
    for name in names:
        await admin.create_pod(pod_manifest(name, ONE_GPU))


async def bound(admin: Admin, names: list[str]) -> bool:
    pods = {p["metadata"]["name"]: p for p in await admin.pods()}
    return all(n in pods and pods[n]["spec"].get("nodeName") for n in names)


def test_standby_takes_over_and_nothing_is_bound_twice(ctj_env: CtjEnvironment) -> None:  # noqa: F811
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NodeSpec(f"gpu-{i}", 64_000, 262_144, 8, "A100") for i in (0, 1)])
        proxy = CuttableProxy(ctj_env.plane.api_port)
        await proxy.start()
        a = Replica(ctj_env, "replica-a")
        b = Replica(ctj_env, "replica-b", server=f"https://127.0.0.1:{proxy.port}")
        c = Replica(ctj_env, "replica-c")
        try:
            await a.start()
            await leading_within(a, LEASE_S)
            await b.start()
            await create_ctj(admin.api, ctj_manifest("stream", window_s=4, replicas=1))
            await create_pods(admin, ["p0", "p1", "p2"])
            await eventually(lambda: bound(admin, ["p0", "p1", "p2"]), what="A binding")
            assert not b.manager.is_leader() and b.binds == []  # a warm standby only

            # A stops cleanly: it releases the lease and B takes over at once.
            await a.stop()
            handover = await leading_within(b, LEASE_S + 30)
            # Waiting out A's lease would take at least LEASE_S - RETRY_S.
            assert handover < LEASE_S - RETRY_S, f"clean handover took {handover:.2f}s"
            await create_pods(admin, ["p3", "p4", "p5"])
            await eventually(lambda: bound(admin, ["p3", "p4", "p5"]), what="B binding")

            # B is cut off from the API server: it can renew nothing.
            await c.start()
            closed = asyncio.create_task(gate_closes(b))
            proxy.blocked = True
            proxy.cut()
            await create_pods(admin, ["p6", "p7"])
            takeover = await leading_within(c, LEASE_S + 30)
            assert not b.manager.is_leader(), "B could still bind when C took over"
            b_closed_wall = await closed
            await eventually(lambda: bound(admin, ["p6", "p7"]), what="C binding")
            assert all(r.at <= b_closed_wall for r in b.binds)
            assert b.task is not None
            with pytest.raises(LeadershipLostError, match="/leases/"):
                await asyncio.wait_for(b.task, 30)
            await check_stream(admin, c)
        finally:
            for replica in (a, b, c):
                await replica.stop()
            await proxy.close()
        check_no_double_binding([*a.binds, *b.binds, *c.binds], await admin.pods())
        assert (a.conflicts, b.conflicts, c.conflicts) == (0, 0, 0)
        print(f"clean handover {handover:.2f}s, takeover after cut-off {takeover:.2f}s")

    run(ctj_env, scenario)


async def check_stream(admin: Admin, new_leader: Replica) -> None:
    """The CTJ went on under C: a window opened after the takeover is retrained, and
    every window up to now is recorded exactly once."""
    await asyncio.sleep(0)
    opened_after = (await get_ctj(admin.api, "stream") or {})["status"]["currentWindow"]["index"]

    async def retrained_under_new_leader() -> dict[str, Any] | None:
        status = (await get_ctj(admin.api, "stream") or {}).get("status", {})
        history = status.get("history", [])
        done = [h for h in history if h["index"] > opened_after and h["outcome"] == "Completed"]
        return status if done else None

    status = await eventually(retrained_under_new_leader, timeout_s=12, what="a window under C")
    indices = [h["index"] for h in status["history"]]
    assert indices == list(range(indices[0], indices[0] + len(indices)))
    assert status["completedWindows"] + status["missedDeadlines"] == status["windowsRecorded"]
    assert any(r.pod.name.startswith("stream-") for r in new_leader.binds)


def check_no_double_binding(binds: list[BindRecord], pods: list[dict[str, Any]]) -> None:
    uids = [r.pod.uid for r in binds]
    assert len(uids) == len(set(uids)), "a pod was bound twice"
    plain = {f"p{i}" for i in range(8)}
    assert plain <= {r.pod.name for r in binds}
    holding = [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
    gpus = [
        (p["spec"]["nodeName"], gpu)
        for p in holding
        if p["spec"].get("nodeName")
        for gpu in p["metadata"]["annotations"][ASSIGNED_GPUS].split(",")
    ]
    assert len(gpus) == len(set(gpus)), "a GPU was handed out twice"
