"""Faults on the real API server: a watch cut that comes back to 410 Gone, a bind that
loses a race (409), kube-apiserver stopped under a wave of binds and restarted, a node
deleted under assumed pods.

After each, the controller's ledger must equal one rebuilt from a fresh LIST (nothing
double-counted, nothing lost) and every pod must be bound once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from controller.devcluster.fleet import Admin, pod_manifest
from controller.devcluster.launcher import ControlPlane
from controller.kube.objects import PodRecord
from controller.runtime import NON_TERMINAL, Controller
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import ApiEffects, BindOutcome
from controller.scheduling.encoders import WholeGpu
from policies import NodeSpec, TaskRequest
from tests.kube.helpers import RunningController, eventually
from tests.kube.proxy import CuttableProxy

pytestmark = pytest.mark.kube

ONE_GPU = TaskRequest(cpu_milli=1000, mem_mib=1024, num_gpus=1, gpu_milli=1000)


def nodes(count: int, gpus: int) -> list[NodeSpec]:
    return [NodeSpec(f"node-{i:03d}", 64_000, 262_144, gpus, "A100") for i in range(count)]


def run(kube: ControlPlane, scenario: Callable[[Admin], Awaitable[None]]) -> None:
    async def main() -> None:
        admin = Admin(str(kube.admin_kubeconfig))
        try:
            await scenario(admin)
        finally:
            await admin.close()

    asyncio.run(main())


async def fresh_gpu_free(admin: Admin) -> np.ndarray:
    """Per-GPU free milli as a brand-new cache would compute it from LISTs."""
    cache = ClusterCache(WholeGpu())
    cache.replace(NODES, (await admin.api.list_all("/api/v1/nodes"))[0])
    pods, _ = await admin.api.list_all("/api/v1/pods", {"fieldSelector": NON_TERMINAL})
    cache.replace(PODS, pods)
    assert cache.ledger.state is not None
    return cache.ledger.state.gpu_free.copy()


async def assert_ledger_matches_api(admin: Admin, ctl: Controller) -> None:
    await ctl.settle()
    assert ctl.cache.ledger.state is not None
    expected = await fresh_gpu_free(admin)
    assert np.array_equal(ctl.cache.ledger.state.gpu_free, expected)


async def bound_nodes(admin: Admin) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in await admin.pods()}


async def all_bound(admin: Admin, count: int) -> dict[str, str] | None:
    placed = await bound_nodes(admin)
    return placed if len(placed) == count and all(placed.values()) else None


class GatedEffects(ApiEffects):
    """Binds wait for the test to open the gate, so it can act between decision and bind."""

    def __init__(self, effects: ApiEffects) -> None:
        super().__init__(effects.api, effects.instance)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def bind(self, pod: PodRecord, node: str, annotations: dict[str, str]) -> BindOutcome:
        self.waiting.set()
        await self.gate.wait()
        return await super().bind(pod, node, annotations)


def gate(ctl: Controller) -> GatedEffects:
    gated = GatedEffects(ctl.scheduler.effects)
    ctl.scheduler.effects = gated
    return gated


def test_watch_cut_then_410_relists_without_double_counting(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(nodes(2, gpus=4))
        proxy = CuttableProxy(kube.api_port)
        await proxy.start()
        server = f"https://127.0.0.1:{proxy.port}"
        try:
            async with RunningController(str(kube.scheduler_kubeconfig), server=server) as ctl:
                for i in range(4):
                    await admin.create_pod(pod_manifest(f"before-{i}", ONE_GPU))
                await eventually(lambda: all_bound(admin, 4), what="first pods bound")
                await ctl.settle()
                lists_before = ctl.pods.lists
                proxy.blocked = True
                proxy.cut()
                # While the controller is cut off: pods go, another scheduler binds one,
                # and etcd forgets the history the controller's watch would resume from.
                await admin.delete_pod("before-0")
                await admin.delete_pod("before-1")
                other = pod_manifest("other", ONE_GPU, scheduler="default-scheduler")
                await admin.create_pod(other)
                assert await admin.bind("other", "node-001") == 201
                kube.compact_etcd()
                proxy.blocked = False
                for i in range(3):
                    await admin.create_pod(pod_manifest(f"after-{i}", ONE_GPU))
                await eventually(lambda: all_bound(admin, 6), what="new pods bound", timeout_s=30)
                assert ctl.pods.expirations >= 1
                assert ctl.pods.lists > lists_before
                await assert_ledger_matches_api(admin, ctl)
                assert int(ctl.cache.ledger.state.gpu_free.sum()) == (8 - 6) * 1000
        finally:
            await proxy.close()

    run(kube, scenario)


def test_bind_conflict_drops_the_assumption_and_frees_the_gpu(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(nodes(2, gpus=2))
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            gated = gate(ctl)
            await admin.create_pod(pod_manifest("contested", ONE_GPU))
            await asyncio.wait_for(gated.waiting.wait(), 10)
            (uid,) = ctl.cache.assumed
            chosen = ctl.cache.assumed[uid].charge.node
            rival = "node-001" if chosen == "node-000" else "node-000"
            state = ctl.cache.ledger.state
            assert int(state.gpu_free[state.node_index[chosen]].sum()) == 1000
            # Someone else binds the pod between our decision and our bind.
            assert await admin.bind("contested", rival) == 201
            gated.gate.set()
            await asyncio.wait_for(ctl.scheduler.wait_idle(), 10)
            assert ctl.scheduler.stats.conflicts == 1
            await ctl.settle()
            assert uid not in ctl.cache.assumed
            assert int(state.gpu_free[state.node_index[chosen]].sum()) == 2000
            assert int(state.gpu_free[state.node_index[rival]].sum()) == 1000
            assert await bound_nodes(admin) == {"contested": rival}
            await assert_ledger_matches_api(admin, ctl)

    run(kube, scenario)


class OutageOnFirstBind(ApiEffects):
    """The first bind stops kube-apiserver before it is sent, and every bind waits for
    that, so the whole first wave of binds goes out into the outage: deterministic,
    whatever the machine's speed."""

    def __init__(self, effects: ApiEffects, stop: Callable[[], None]) -> None:
        super().__init__(effects.api, effects.instance)
        self.stop = stop
        self.down = asyncio.Event()
        self.outcomes: list[BindOutcome] = []
        self._stopping = False

    async def bind(self, pod: PodRecord, node: str, annotations: dict[str, str]) -> BindOutcome:
        if not self._stopping:
            self._stopping = True
            await asyncio.to_thread(self.stop)
            self.down.set()
        await self.down.wait()
        outcome = await super().bind(pod, node, annotations)
        self.outcomes.append(outcome)
        return outcome


def test_apiserver_restart_mid_run_places_every_pod_once(kube: ControlPlane) -> None:
    early = [f"early-{i}" for i in range(15)]
    late = [f"late-{i}" for i in range(15)]

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(nodes(4, gpus=8))
        for name in early:  # pending before the controller starts: one pass places all
            await admin.create_pod(pod_manifest(name, ONE_GPU))
        running = RunningController(str(kube.scheduler_kubeconfig), scheduler=_fast_expiry())
        ctl = running.controller
        outage = OutageOnFirstBind(ctl.scheduler.effects, kube.stop_apiserver)
        ctl.scheduler.effects = outage
        bound: list[Any] = []
        ctl.scheduler.on_bound = bound.append
        async with running:
            await asyncio.wait_for(outage.down.wait(), 30)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(kube.start_apiserver)
            for name in late:
                await admin.create_pod(pod_manifest(name, ONE_GPU))
            placed = await eventually(lambda: all_bound(admin, 30), timeout_s=60, what="all bound")
            await assert_ledger_matches_api(admin, ctl)
            stats = ctl.scheduler.stats
            # Every early pod's first bind met the outage: no answer, and the re-read
            # that would settle it had none either, so its assumption had to expire.
            assert outage.outcomes[: len(early)] == [BindOutcome.RETRY] * len(early)
            assert stats.bind_retries >= len(early)
            assert stats.expired >= len(early)
            assert stats.conflicts == 0
            names = [record.pod.name for record in bound]
            assert len(names) == len(set(names)), "a pod was bound twice"
            assert sorted(names) == sorted(placed) == sorted(early + late)
            assert int(ctl.cache.ledger.state.gpu_free.sum()) == (32 - 30) * 1000
            print(f"restart: {stats}")

    run(kube, scenario)


def test_node_deleted_under_assumed_pod(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(nodes(2, gpus=2))
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            gated = gate(ctl)
            await admin.create_pod(pod_manifest("orphan", ONE_GPU))
            await asyncio.wait_for(gated.waiting.wait(), 10)
            (uid,) = ctl.cache.assumed
            doomed = ctl.cache.assumed[uid].charge.node
            await admin.api.call("DELETE", f"/api/v1/nodes/{doomed}")
            await asyncio.wait_for(ctl.nodes.wait_until(lambda: doomed not in ctl.cache.nodes), 10)
            held = ctl.cache.assumed.get(uid)
            assert held is None or held.charge.node != doomed
            assert not ctl.cache.ledger.has_node(doomed)
            gated.gate.set()

            # The bind may still land on the deleted node (the API server does not check);
            # the controller then recreates the pod. Either way it ends as one pod on the
            # node that is left; a poll can see the brief moment in between, so wait for
            # the end state rather than for any binding.
            async def on_the_other_node() -> dict[str, str] | None:
                placed = await all_bound(admin, 1)
                return placed if placed and doomed not in placed.values() else None

            await eventually(on_the_other_node, what="one pod, placed on the node that is left")
            await assert_ledger_matches_api(admin, ctl)

    run(kube, scenario)


def _fast_expiry() -> Any:
    from controller.scheduling.scheduler import SchedulerOptions

    return SchedulerOptions(assume_timeout_s=3.0)
