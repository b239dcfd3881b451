"""Shadow policies on the real API server: a replica (the Manager `controller run`
builds) places a burst of 1-, 2- and 4-GPU pods with best-fit while best-fit itself and
FGD shadow it. The best-fit shadow must report 0 differing decisions on every snapshot
it saw, both shadows must have judged snapshots, the shadow log must hold their verdicts
and the scraped metrics must say the same."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.devcluster.fleet import Admin, gpu_nodes, pod_manifest
from controller.devcluster.launcher import ControlPlane
from controller.kube.kubeapi import KubeApi, load_config
from controller.manager import Manager, ManagerOptions
from controller.runtime import ControllerOptions
from controller.scheduling.scheduler import SchedulerOptions
from controller.shadow.log import read_shadow_log
from controller.shadow.runner import ShadowOptions
from policies import TaskRequest, make_policy
from tests.kube.helpers import eventually
from tests.test_shadow_failures import ExitsInChild, RaisesInChild

pytestmark = pytest.mark.kube


@contextlib.asynccontextmanager
async def replica(
    kube: ControlPlane, shadows: ShadowOptions, nodes: list[Any]
) -> AsyncIterator[tuple[Admin, Manager, asyncio.Task[None]]]:
    """A best-fit replica without a lease or CTJs (passes at most every 0.2 s) shadowed
    by `shadows`, leading over `nodes`; cancelled (and its end checked) on leaving."""
    options = ManagerOptions(
        controller=ControllerOptions(scheduler=SchedulerOptions(min_pass_interval_s=0.2)),
        lease=None,
        reconcile_ctjs=False,
        probe_port=None,
        shadows=shadows,
    )
    admin = Admin(str(kube.admin_kubeconfig))
    api = KubeApi(load_config(str(kube.scheduler_kubeconfig)))
    manager = Manager(api, make_policy("bestfit"), options)
    task = asyncio.create_task(manager.run())
    try:
        await admin.create_nodes(nodes)
        await eventually(manager.leading.wait, timeout_s=60, what="leading")
        yield admin, manager, task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await api.close()
        await admin.close()


def test_the_live_policy_as_shadow_agrees_and_fgd_is_judged(
    kube: ControlPlane, tmp_path: Path
) -> None:
    log_path = tmp_path / "shadow.jsonl"
    shadows = ShadowOptions((make_policy("bestfit"), make_policy("fgd")), log_path, 0.05)

    async def scenario() -> dict[str, float]:
        nodes = gpu_nodes(6, 8, ["A100", "V100"])
        async with replica(kube, shadows, nodes) as (admin, manager, _task):
            sizes = [1, 2, 4, 1, 1, 2] * 3
            for i, n in enumerate(sizes):
                await admin.create_pod(pod_manifest(f"p{i:02d}", TaskRequest(1000, 1024, n, 1000)))
                if i % 6 == 5:
                    await asyncio.sleep(0.3)  # several passes, each a snapshot to shadow
            await eventually(lambda: _bound(admin, len(sizes)), timeout_s=120, what="all bound")
            assert manager.shadows is not None
            runner = manager.shadows
            await eventually(
                lambda: _judged(runner.stats["fgd"].evaluations), timeout_s=30, what="verdicts"
            )
            text = generate_latest(manager.metrics.registry).decode()
            return {
                f"{s.name}{s.labels}": s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name.startswith("gpufleet_shadow")
            }

    metrics = asyncio.run(scenario())
    own = "{'policy': 'bestfit'}"
    assert metrics[f"gpufleet_shadow_evaluations_total{own}"] >= 1
    assert metrics[f"gpufleet_shadow_decisions_total{own}"] >= 1
    assert metrics[f"gpufleet_shadow_differing_decisions_total{own}"] == 0
    assert metrics["gpufleet_shadow_evaluations_total{'policy': 'fgd'}"] >= 1
    offered = metrics["gpufleet_shadow_snapshots_offered_total{}"]
    assert offered >= metrics[f"gpufleet_shadow_evaluations_total{own}"]
    log = read_shadow_log(log_path)
    assert log.skipped == 0
    mine = [r for r in log.rows if r["policy"] == "bestfit"]
    assert mine and all(r["differing"] == 0 and r["live_policy"] == "bestfit" for r in mine)
    assert {r["policy"] for r in log.rows} == {"bestfit", "fgd"}


def test_failing_shadows_cost_their_verdicts_and_the_live_policy_keeps_binding(
    kube: ControlPlane, tmp_path: Path
) -> None:
    """Shadows that raise and exit in the child, and a shadow log whose directory does
    not exist: every pod is still bound, the shadows' task is still running when they
    are (the controller did not end), and each failure is counted as its shadow's
    error while best-fit's shadow is still judged."""
    log_path = tmp_path / "missing" / "shadow.jsonl"
    policies = (RaisesInChild(), ExitsInChild(), make_policy("bestfit"))
    shadows = ShadowOptions(policies, log_path, 0.05)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with replica(kube, shadows, gpu_nodes(4, 8, ["A100"])) as (admin, manager, task):
            runner = manager.shadows
            assert runner is not None
            for i in range(12):
                await admin.create_pod(pod_manifest(f"f{i:02d}", TaskRequest(1000, 1024, 1, 1000)))
                if i % 4 == 3:
                    await asyncio.sleep(0.5)  # several passes, each a snapshot to shadow
            await eventually(lambda: _bound(admin, 12), timeout_s=120, what="all bound")
            judged = runner.stats["bestfit"]
            await eventually(lambda: _judged(judged.errors), timeout_s=60, what="a lost line")
            assert not task.done(), "the controller ended"
            assert runner.stats["raises"].errors >= judged.evaluations >= 1
            assert runner.stats["exits"].errors >= judged.evaluations
            # Each verdict's line lost (the last may still be on its way to the log).
            assert judged.evaluations - 1 <= judged.errors <= judged.evaluations
            assert not log_path.parent.exists()

    asyncio.run(scenario())


async def _bound(admin: Admin, count: int) -> bool:
    pods = await admin.pods()
    return sum(bool(p["spec"].get("nodeName")) for p in pods) >= count


async def _judged(count: int) -> bool:
    return count > 0
