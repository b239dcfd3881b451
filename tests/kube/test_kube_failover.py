"""Kill -9 of the leader in the middle of a 2,000-pod burst, on the real API server.

Two replicas of the deployed entry (`python -m controller.serve serve`, as the
controller ServiceAccount with deploy/'s RBAC, the Lease in gpufleet-system) run as
processes. While the leader is binding the burst it is SIGKILLed: no lease release, no
clean-up, binds cut off wherever they were. Then:

* the standby takes the Lease, no sooner than the dead leader's lease allowed and
  within a generous bound of the lease duration;
* every pod ends bound, once: each pod's `bound-at` was written either by the old
  leader before the kill or by the new one after it acquired the Lease, never in
  between, and the new leader's bind count is exactly the pods it is credited with;
* no GPU is over-committed (per node and GPU index, assigned milli-GPU sums to ≤ 1000);
* the surviving replica stops cleanly on SIGTERM (exit 0) and hands the Lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster.fleet import Admin, pod_manifest
from controller.devcluster.harness import BindWatcher, ServeReplica, metric
from controller.devcluster.install import SYSTEM_NAMESPACE
from controller.devcluster.launcher import free_port
from controller.kube.objects import ASSIGNED_GPUS, ASSIGNED_MILLI, BOUND_AT
from policies import MILLI, NodeSpec, TaskRequest
from tests.kube.ctj_helpers import (
    LEASE,
    CtjEnvironment,
    ctj_env,  # noqa: F401 - fixture
    run,
)
from tests.kube.helpers import eventually

pytestmark = pytest.mark.kube

PODS = 2000
NODES, GPUS_PER_NODE = 250, 8
KILL_AFTER = 300
"""Pods bound before the leader is killed."""
LEASE_S, RENEW_S, RETRY_S = 4.0, 3.0, 0.5
WHOLE = TaskRequest(cpu_milli=1000, mem_mib=1024, num_gpus=1, gpu_milli=MILLI)
SMALL = TaskRequest(cpu_milli=500, mem_mib=512, num_gpus=1, gpu_milli=MILLI)
"""A 1-GPU pod asking for less CPU (a share would be a whole GPU under --backend whole)."""


def burst() -> dict[str, TaskRequest]:
    """Alternating 1-GPU shapes: 2,000 GPUs' worth on 2,000, so the cluster ends full."""
    return {f"burst-{i:04d}": WHOLE if i % 2 else SMALL for i in range(PODS)}


@pytest.fixture
def replicas(ctj_env: CtjEnvironment, tmp_path: Path) -> Iterator[list[ServeReplica]]:  # noqa: F811
    args = [
        *("--policy", "bestfit", "--kubeconfig", str(ctj_env.sa_kubeconfig)),
        *("--lease-namespace", SYSTEM_NAMESPACE, "--no-ctj", "--log-level", "INFO"),
        *("--lease-duration", str(LEASE_S), "--renew-deadline", str(RENEW_S)),
        *("--retry-period", str(RETRY_S)),
    ]
    pair = [ServeReplica(args, free_port(), tmp_path / f"replica-{n}.log") for n in "ab"]
    try:
        yield pair
    finally:
        for replica in pair:
            replica.stop(timeout_s=10)


async def create_pods(admin: Admin, pods: dict[str, TaskRequest]) -> None:
    gate = asyncio.Semaphore(16)

    async def one(name: str, task: TaskRequest) -> None:
        async with gate:
            await admin.create_pod(pod_manifest(name, task))

    await asyncio.gather(*(one(n, t) for n, t in pods.items()))


async def lease_spec(admin: Admin) -> dict[str, Any]:
    status, lease = await admin.api.request("GET", LEASE)
    return dict(lease.get("spec") or {}) if status == 200 else {}


async def leader_and_standby(pair: list[ServeReplica]) -> tuple[ServeReplica, ServeReplica, str]:
    """Once both replicas are ready and one leads: (leader, standby, leader's identity)."""

    async def settled() -> tuple[ServeReplica, ServeReplica, str] | None:
        for replica in pair:
            assert replica.running(), f"replica exited early:\n{replica.log_tail()}"
        for replica in pair:
            if (await replica.get("/readyz"))[0] != 200:
                return None
        a, b = pair
        who_a, who_b = await a.identity_if_leading(), await b.identity_if_leading()
        if who_a and not who_b:
            return a, b, who_a
        if who_b and not who_a:
            return b, a, who_b
        return None

    found = await eventually(settled, timeout_s=60, what="two ready replicas, one leading")
    assert isinstance(found, tuple)
    return found


def test_kill_9_of_the_leader_mid_burst(
    ctj_env: CtjEnvironment,  # noqa: F811
    replicas: list[ServeReplica],
) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(
            NodeSpec(f"gpu-{i:03d}", 64_000, 262_144, GPUS_PER_NODE, "A100") for i in range(NODES)
        )
        for replica in replicas:
            replica.start()
        leader, standby, old_identity = await leader_and_standby(replicas)
        assert (await lease_spec(admin)).get("holderIdentity") == old_identity
        watcher = BindWatcher(admin.api)
        watching = asyncio.create_task(watcher.run())
        pods = burst()
        creating = asyncio.create_task(create_pods(admin, pods))
        try:
            await watcher.wait_until(lambda: len(watcher.bound_at) >= KILL_AFTER, 60)
            in_flight, killed_at_wall, killed_at = await kill_while_binding(leader)
            bound_at_kill = len(watcher.bound_at)
            spec = await eventually(
                lambda: new_holder(admin, old_identity), timeout_s=60, what="a new lease holder"
            )
            takeover = time.monotonic() - killed_at
            await creating
            await watcher.wait_for(set(pods), timeout_s=120)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            if not creating.done():
                creating.cancel()
        assert bound_at_kill < PODS, "the burst was over before the kill"
        assert leader.proc is not None and leader.proc.wait(10) == -9
        # Order: the standby waited out the dead leader's lease (it renewed at most a
        # renew deadline before the kill); outcome: it took over, well within bounds.
        new_identity = await standby.identity_if_leading()
        assert spec["holderIdentity"] == new_identity
        assert LEASE_S - RENEW_S <= takeover <= 2 * LEASE_S + 2, f"takeover took {takeover:.2f}s"
        acquired = _rfc3339(spec["acquireTime"])
        assert killed_at_wall < acquired

        placed = await admin.pods()
        check_bound_once(placed, pods, watcher.bound_at, killed_at_wall, acquired)
        check_no_gpu_overcommitted(placed, pods)
        by_old, by_new = split_by_leader(placed, killed_at_wall, acquired)
        samples = await standby.metrics()
        assert metric(samples, "gpufleet_bindings_total") == by_new
        assert by_old >= KILL_AFTER and by_new > 0 and by_old + by_new == PODS
        # The survivor stops cleanly and hands the Lease back.
        assert standby.stop() == 0, standby.log_tail()
        assert (await lease_spec(admin)).get("holderIdentity") == ""
        retries = metric(samples, "gpufleet_bind_retries_total")
        conflicts = metric(samples, "gpufleet_scheduling_failures_total", reason="bind_conflict")
        print(
            f"\nkilled with {in_flight} binds in flight and {bound_at_kill} seen bound; "
            f"takeover {takeover:.2f}s; bound by the old leader {by_old}, by the new {by_new} "
            f"({retries:.0f} retries, {conflicts:.0f} conflicts)"
        )

    run(ctj_env, scenario)


async def kill_while_binding(leader: ServeReplica) -> tuple[int, float, float]:
    """SIGKILL the leader right after its own metrics show binds it decided and has not
    finished; returns how many, and the wall and monotonic time of the kill."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        samples = await leader.metrics()
        decided = metric(samples, "gpufleet_scheduling_attempts_total", result="scheduled")
        in_flight = int(decided - metric(samples, "gpufleet_bindings_total"))
        if in_flight > 0:
            wall, mono = time.time(), time.monotonic()
            leader.kill()
            return in_flight, wall, mono
    raise AssertionError("the leader never had binds in flight")


async def new_holder(admin: Admin, old: str) -> dict[str, Any] | None:
    spec = await lease_spec(admin)
    return spec if spec.get("holderIdentity") not in (None, "", old) else None


def _rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _bound_at(pod: dict[str, Any]) -> float:
    return float(pod["metadata"]["annotations"][BOUND_AT])


def check_bound_once(
    placed: list[dict[str, Any]],
    pods: dict[str, TaskRequest],
    seen: dict[str, float],
    killed_at: float,
    acquired: float,
) -> None:
    """The burst's pods and no others (nothing recreated), each bound by one leader's one
    decision: `bound-at` (the deciding pass's time) falls before the kill or after the
    new leader acquired the Lease, and not after the bind was seen on the watch."""
    assert sorted(p["metadata"]["name"] for p in placed) == sorted(pods)
    for pod in placed:
        name = pod["metadata"]["name"]
        assert pod["spec"].get("nodeName"), f"{name} is not bound"
        at = _bound_at(pod)
        created = _rfc3339(pod["metadata"]["creationTimestamp"])
        assert created - 1.0 <= at <= seen[name], f"{name}: bound-at {at} out of order"
        assert at < killed_at or at >= acquired, f"{name} bound while no one led"


def split_by_leader(
    placed: list[dict[str, Any]], killed_at: float, acquired: float
) -> tuple[int, int]:
    old = sum(_bound_at(p) < killed_at for p in placed)
    new = sum(_bound_at(p) >= acquired for p in placed)
    return old, new


def check_no_gpu_overcommitted(placed: list[dict[str, Any]], pods: dict[str, TaskRequest]) -> None:
    """Each pod holds the GPUs it asked for, and no GPU holds more than one GPU's worth."""
    used: dict[tuple[str, int], int] = defaultdict(int)
    for pod in placed:
        notes = pod["metadata"]["annotations"]
        task = pods[pod["metadata"]["name"]]
        gpus = [int(g) for g in notes[ASSIGNED_GPUS].split(",")]
        milli = int(notes[ASSIGNED_MILLI])
        assert (len(gpus), milli) == (task.num_gpus, task.gpu_milli)
        for gpu in gpus:
            assert 0 <= gpu < GPUS_PER_NODE
            used[(pod["spec"]["nodeName"], gpu)] += milli
    over = {where: milli for where, milli in used.items() if milli > MILLI}
    assert not over, f"over-committed GPUs: {over}"
