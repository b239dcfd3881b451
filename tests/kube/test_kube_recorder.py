"""Record a mixed cluster on the real API server and replay it: `controller record`'s
trace puts each of our pods where the cluster did.

Before recording: another scheduler's pods bound by hand, one of ours placed and still
running, one of ours placed and finished. While recording: ours placed by the controller
(bestfit), another foreign pod bound by hand, one of ours that cannot be placed (it asks
for all of the V100 node, where a foreign pod holds a GPU). Events are a second or more
apart, so the replay (which starts a job when it arrives, a few milliseconds before the
cluster bound it) meets them in the cluster's order.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster.fleet import Admin, pod_manifest
from controller.devcluster.launcher import ControlPlane
from controller.kube.informer import Informer
from controller.kube.objects import ASSIGNED_GPUS
from controller.recorder import TraceRecorder
from controller.runtime import Controller
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.scheduler import SchedulerOptions
from gpufleet.cli import main
from policies import NodeSpec, TaskRequest, make_policy
from simulator.engine import EngineOptions, Simulation
from simulator.metrics import JOB_COLUMNS, OCCUPANT
from tests.kube.helpers import RunningController, eventually
from traces.canonical import pin_of, read_jobs, read_nodes, recording_end

pytestmark = pytest.mark.kube

NODES = [
    NodeSpec("a100-0", 64_000, 262_144, 8, "A100"),
    NodeSpec("a100-1", 64_000, 262_144, 8, "A100"),
    NodeSpec("v100-0", 64_000, 262_144, 8, "V100"),
]
OTHER = "other-scheduler"
STATUS, START, END, PLACED = (
    JOB_COLUMNS.index(c) for c in ("status", "start_s", "end_s", "placement")
)


def gpus(n: int) -> TaskRequest:
    return TaskRequest(4000, 8192, n, 1000)


async def phase(admin: Admin, name: str) -> str:
    pod = await admin.pod(name)
    return "" if pod is None else str(pod.get("status", {}).get("phase", ""))


async def placed_by_us(admin: Admin, name: str) -> str:
    """`node:gpu+gpu` as our Binding recorded it ("" while unbound)."""
    pod = await admin.pod(name)
    if pod is None or not pod["spec"].get("nodeName"):
        return ""
    chosen = pod["metadata"]["annotations"][ASSIGNED_GPUS].replace(",", "+")
    return f"{pod['spec']['nodeName']}:{chosen}"


class Cluster:
    """The test's side of the cluster: creates pods and remembers their uids."""

    def __init__(self, admin: Admin, ctl: Controller) -> None:
        self.admin = admin
        self.ctl = ctl
        self.uids: dict[str, str] = {}

    async def ours(self, name: str, task: TaskRequest, **kw: Any) -> str:
        created = await self.admin.create_pod(pod_manifest(name, task, **kw))
        self.uids[name] = created["metadata"]["uid"]
        return await eventually(lambda: placed_by_us(self.admin, name), what=f"{name} bound")

    async def foreign(self, name: str, task: TaskRequest, node: str) -> None:
        created = await self.admin.create_pod(pod_manifest(name, task, scheduler=OTHER))
        self.uids[name] = created["metadata"]["uid"]
        assert await self.admin.bind(name, node) == 201
        await eventually(lambda: self._counted(name), what=f"{name} counted by the controller")

    async def _counted(self, name: str) -> bool:
        return self.ctl.cache.ledger.counted(self.uids[name])

    def counted_as(self, name: str) -> str:
        """Where the controller's cache counts another scheduler's pod."""
        charge = self.ctl.cache.ledger.charge_of(self.uids[name])
        assert charge is not None
        return f"{charge.node}:{'+'.join(map(str, charge.gpus))}"


async def record_mixed_cluster(kube: ControlPlane, out: Path) -> dict[str, str]:
    """Runs the scenario; returns where the cluster put each pod (`node:gpu+gpu`)."""
    admin = Admin(str(kube.admin_kubeconfig))
    recorder = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await admin.create_nodes(NODES)
        eager = SchedulerOptions(min_pass_interval_s=0.0)
        async with RunningController(
            str(kube.scheduler_kubeconfig), "bestfit", scheduler=eager
        ) as ctl:
            cluster = Cluster(admin, ctl)
            where: dict[str, str] = {}
            await cluster.foreign("sys-a", gpus(3), "a100-0")
            await cluster.foreign("sys-v", gpus(1), "v100-0")
            where["early"] = await cluster.ours("early", gpus(2))
            where["done"] = await cluster.ours("done", gpus(1), runtime="1s")
            await eventually(lambda: _is(admin, "done", "Succeeded"), what="done finished")

            recorder = TraceRecorder(WholeGpu())
            informers = [
                Informer(admin.api, "nodes", "/api/v1/nodes", recorder),
                Informer(admin.api, "pods", "/api/v1/pods", recorder),
            ]
            tasks = [asyncio.create_task(i.run()) for i in informers]
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in informers)), 30)
            await asyncio.sleep(1.0)

            where["j1"] = await cluster.ours("j1", gpus(1), runtime="3s")
            await asyncio.sleep(1.0)
            await cluster.foreign("sys-late", gpus(2), "a100-1")
            await asyncio.sleep(1.0)
            where["j2"] = await cluster.ours("j2", gpus(4), runtime="60s")
            await asyncio.sleep(1.0)
            stuck = pod_manifest("stuck", gpus(8), allowed_models={"V100"})
            cluster.uids["stuck"] = (await admin.create_pod(stuck))["metadata"]["uid"]
            await eventually(lambda: _is(admin, "j1", "Succeeded"), what="j1 finished")
            await asyncio.sleep(1.0)
            where["j3"] = await cluster.ours("j3", gpus(1), runtime="60s")
            await asyncio.sleep(1.0)
            assert await placed_by_us(admin, "stuck") == "", "stuck should not fit"
            for name in ("sys-a", "sys-v", "sys-late"):
                where[name] = cluster.counted_as(name)
            recorder.write(out)
        return where
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await admin.close()


async def _is(admin: Admin, name: str, wanted: str) -> bool:
    return await phase(admin, name) == wanted


def replay(out: Path, keep_occupants: bool = True) -> dict[str, tuple[Any, ...]]:
    jobs = list(read_jobs(out / "jobs.csv"))
    if not keep_occupants:
        jobs = [j for j in jobs if pin_of(j) is None]
    options = EngineOptions(horizon_s=recording_end(out) or 0.0)
    sim = Simulation(read_nodes(out / "nodes.csv"), jobs, make_policy("bestfit"), options)
    return {str(row[0]): row for row in sim.run().jobs}


def test_a_recorded_mixed_cluster_replays_to_the_same_placements(
    kube: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "observed"
    where = asyncio.run(record_mixed_cluster(kube, out))
    jobs = {j.id: j for j in read_jobs(out / "jobs.csv")}
    pinned = {name for name, j in jobs.items() if pin_of(j) is not None}
    assert pinned == {"sys-a", "sys-v", "sys-late", "early", "done"}
    assert set(jobs) - pinned == {"j1", "j2", "j3", "stuck"}

    rows = replay(out)
    # Our pods placed while recording: the same node and GPUs as in the cluster.
    for name in ("j1", "j2", "j3"):
        assert rows[name][PLACED] == where[name], name
    assert rows["j1"][STATUS] == "completed"
    # Everything no policy placed here occupies what it occupied, as the controller
    # counted it (another scheduler's pods) or as our Binding recorded it.
    for name in pinned:
        assert (rows[name][STATUS], rows[name][PLACED]) == (OCCUPANT, where[name]), name
    began = json.loads((out / "recording.json").read_text())["began_s"]
    assert rows["done"][END] is not None and rows["done"][END] <= began
    # The pod that could not be placed waits to the end, never started.
    assert (rows["stuck"][STATUS], rows["stuck"][START]) == ("unfinished", None)

    # The occupants are what makes it so: without them the replay goes elsewhere.
    bare = replay(out, keep_occupants=False)
    assert bare["stuck"][START] is not None
    assert bare["j2"][PLACED] != where["j2"]

    # The README's command reads the directory as it is.
    capsys.readouterr()
    run = tmp_path / "replay"
    assert main(["simulate", "--trace", str(out), "--policy", "bestfit", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["completed"], summary["unfinished"]) == (1, 3)  # j2, j3 run on; stuck waits
