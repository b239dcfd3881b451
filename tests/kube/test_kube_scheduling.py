"""The controller against a real kube-apiserver with KWOK GPU nodes: binding, GPU
annotations, unschedulable reporting, gangs, other schedulers' pods, KWOK completion."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from controller.devcluster.fleet import Admin, node_manifest, pod_manifest
from controller.devcluster.launcher import ControlPlane
from controller.kube.objects import (
    ASSIGNED_GPUS,
    ASSIGNED_MILLI,
    ATTAINED_GPU_S,
    GANG_SIZE,
    JOB_ID,
    JOB_LABEL,
    RESTARTS,
)
from policies import FixedDuration, NodeSpec, Taint, TaskRequest
from tests.kube.helpers import RunningController, eventually
from traces.canonical import read_jobs, read_nodes

pytestmark = pytest.mark.kube

WHOLE = TaskRequest(cpu_milli=1000, mem_mib=1024, num_gpus=1, gpu_milli=1000)


def gpu_nodes(count: int, gpus: int = 4, model: str = "V100") -> list[NodeSpec]:
    return [NodeSpec(f"node-{i:03d}", 32_000, 131_072, gpus, model) for i in range(count)]


def run(kube: ControlPlane, scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        admin = Admin(str(kube.admin_kubeconfig))
        try:
            await scenario(admin)
        finally:
            await admin.close()

    asyncio.run(main())


async def bound(admin: Admin, names: list[str]) -> list[bool]:
    return [bool(((await admin.pod(n)) or {})["spec"].get("nodeName")) for n in names]


def test_binds_with_gpu_annotations_and_counts_the_gpus(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(2, gpus=2))
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            await admin.create_pod(pod_manifest("half", TaskRequest(500, 512, 1, 500)))
            await admin.create_pod(pod_manifest("two", TaskRequest(1000, 1024, 2, 1000)))

            async def both_bound():  # type: ignore[no-untyped-def]
                pods = [await admin.pod(n) for n in ("half", "two")]
                return all(p and p["spec"].get("nodeName") for p in pods) and pods

            half, two = await eventually(both_bound, what="both pods bound")
            # Best-fit packs: the 2-GPU pod fills one node, the half-GPU pod the other.
            assert {half["spec"]["nodeName"], two["spec"]["nodeName"]} == {"node-000", "node-001"}
            assert two["metadata"]["annotations"][ASSIGNED_GPUS] == "0,1"
            # The whole backend's device plugin hands out whole GPUs: so does the scheduler.
            assert half["metadata"]["annotations"][ASSIGNED_MILLI] == "1000"
            await ctl.settle()
            state = ctl.cache.ledger.state
            assert int(state.gpu_free.sum()) == 4000 - 2000 - 1000

    run(kube, scenario)


def test_unschedulable_pod_gets_condition_and_event(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(1, gpus=2))
        async with RunningController(str(kube.scheduler_kubeconfig)):
            await admin.create_pod(pod_manifest("huge", WHOLE.with_gpus(8)))

            async def condition():  # type: ignore[no-untyped-def]
                pod = await admin.pod("huge")
                conds = (pod or {}).get("status", {}).get("conditions") or []
                return [c for c in conds if c["type"] == "PodScheduled" and c["status"] == "False"]

            (cond,) = await eventually(condition, what="PodScheduled=False")
            assert cond["reason"] == "Unschedulable"
            assert cond["message"] == "bestfit: 0/1 nodes are available: 1 insufficient GPUs"
            uid = (await admin.pod("huge"))["metadata"]["uid"]
            events = await admin.api.call("GET", "/apis/events.k8s.io/v1/namespaces/default/events")
            ours = [e for e in events["items"] if e["regarding"].get("uid") == uid]
            # One report per distinct reason, not one per pass.
            assert [(e["reason"], e["reportingController"]) for e in ours] == [
                ("FailedScheduling", "gpufleet.io/scheduler")
            ], [(e["reportingInstance"], e["note"]) for e in ours]

    run(kube, scenario)


def test_gang_binds_whole_or_waits(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(2, gpus=2))
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            gang = {JOB_LABEL: "train"}
            size = {GANG_SIZE: "3"}
            for i in range(2):
                await admin.create_pod(
                    pod_manifest(f"train-{i}", WHOLE, labels=gang, annotations=size)
                )
            await asyncio.sleep(1.0)
            await ctl.settle()
            assert await bound(admin, ["train-0", "train-1"]) == [False, False]
            await admin.create_pod(pod_manifest("train-2", WHOLE, labels=gang, annotations=size))

            async def all_bound():  # type: ignore[no-untyped-def]
                pods = [await admin.pod(f"train-{i}") for i in range(3)]
                return all(p["spec"].get("nodeName") for p in pods)

            await eventually(all_bound, what="the whole gang bound")
            # A gang that cannot fit as a whole binds no member at all.
            big = {JOB_LABEL: "big"}
            for i in range(2):
                await admin.create_pod(
                    pod_manifest(f"big-{i}", WHOLE, labels=big, annotations={GANG_SIZE: "2"})
                )
            await asyncio.sleep(1.0)
            await ctl.settle()
            assert await bound(admin, ["big-0", "big-1"]) == [False, False]

    run(kube, scenario)


def test_pods_of_other_schedulers_hold_their_gpus(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(1, gpus=2))
        foreign = pod_manifest("foreign", WHOLE, scheduler="default-scheduler")
        await admin.create_pod(foreign)
        assert await admin.bind("foreign", "node-000") == 201
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            for i in range(2):
                await admin.create_pod(pod_manifest(f"ours-{i}", WHOLE))
            await asyncio.sleep(1.0)
            await ctl.settle()
            placed = await bound(admin, ["ours-0", "ours-1"])
            assert sorted(placed) == [False, True]
            ours = await admin.pod("ours-0" if placed[0] else "ours-1")
            # The foreign pod holds GPU 0 (the first free one), so ours gets GPU 1.
            assert ours["metadata"]["annotations"][ASSIGNED_GPUS] == "1"

    run(kube, scenario)


def test_kwok_stage_completes_pod_after_its_runtime_and_frees_gpu(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(1, gpus=1))
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            await admin.create_pod(pod_manifest("short", WHOLE, runtime="2s"))
            await admin.create_pod(pod_manifest("next", WHOLE))

            async def phase():  # type: ignore[no-untyped-def]
                pod = await admin.pod("short")
                return pod["status"].get("phase") == "Succeeded" and pod

            loop = asyncio.get_running_loop()
            start = loop.time()
            done = await eventually(phase, timeout_s=30, what="short pod Succeeded")
            assert done["spec"]["nodeName"] == "node-000"
            assert 1.5 <= loop.time() - start <= 15

            async def next_bound():  # type: ignore[no-untyped-def]
                return (await admin.pod("next"))["spec"].get("nodeName")

            assert await eventually(next_bound, what="the waiting pod placed on the freed GPU")
            await ctl.settle()
            assert int(ctl.cache.ledger.state.gpu_free.sum()) == 0

    run(kube, scenario)


def test_scheduler_identity_is_limited_by_rbac(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        from controller.kube.kubeapi import KubeApi, load_config

        api = KubeApi(load_config(str(kube.scheduler_kubeconfig)))
        try:
            status, _ = await api.request("GET", "/api/v1/nodes")
            assert status == 200
            status, _ = await api.request("POST", "/api/v1/nodes", body={"metadata": {"name": "x"}})
            assert status == 403
        finally:
            await api.close()

    run(kube, scenario)


def test_taints_tolerations_and_node_selectors_are_honoured(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        plain = NodeSpec("node-000", 32_000, 131_072, 4, "V100")
        reserved = NodeSpec(
            "node-001",
            32_000,
            131_072,
            4,
            "V100",
            labels={"pool": "inference"},
            taints=(Taint("dedicated", "inference"),),
        )
        await admin.create_nodes([plain, reserved])
        async with RunningController(str(kube.scheduler_kubeconfig)):
            # Best-fit would pack onto either node; only the selector decides.
            selected = pod_manifest("serving", WHOLE, node_selector={"pool": "inference"})
            selected["spec"]["tolerations"].append(
                {"key": "dedicated", "operator": "Equal", "value": "inference"}
            )
            await admin.create_pod(selected)
            untolerated = pod_manifest("stray", WHOLE, node_selector={"pool": "inference"})
            await admin.create_pod(untolerated)
            for i in range(5):
                await admin.create_pod(pod_manifest(f"batch-{i}", WHOLE))

            async def settled():  # type: ignore[no-untyped-def]
                placed = {
                    p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in await admin.pods()
                }
                return placed if sum(1 for n in placed.values() if n) == 5 else None

            placed = await eventually(settled, what="five pods placed")
            assert placed["serving"] == "node-001"
            assert placed["stray"] == ""  # selects the tainted pool without tolerating it
            batch = [placed[f"batch-{i}"] for i in range(5)]
            assert sorted(batch) == ["", "node-000", "node-000", "node-000", "node-000"]

    run(kube, scenario)


def test_hami_backend_writes_its_device_annotations_at_bind(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        node = node_manifest(NodeSpec("node-000", 32_000, 131_072, 2, "A100"))
        node["metadata"]["labels"]["nvidia.com/gpu.memory"] = "40960"
        node["metadata"]["annotations"]["gpufleet.io/gpu-uuids"] = "GPU-aaa,GPU-bbb"
        await admin.api.call("POST", "/api/v1/nodes", body=node)
        async with RunningController(str(kube.scheduler_kubeconfig), backend="hami"):
            shared = pod_manifest("shared", TaskRequest(1000, 1024, 1, 1000))
            limits = shared["spec"]["containers"][0]["resources"]["limits"]
            limits["nvidia.com/gpucores"] = "25"
            await admin.create_pod(shared)

            async def notes():  # type: ignore[no-untyped-def]
                pod = await admin.pod("shared")
                return pod["spec"].get("nodeName") and pod["metadata"]["annotations"]

            annotations = await eventually(notes, what="bound with annotations")
            assert annotations[ASSIGNED_MILLI] == "250"
            assert annotations["hami.io/vgpu-node"] == "node-000"
            gpu = int(annotations[ASSIGNED_GPUS])
            uuid = ("GPU-aaa", "GPU-bbb")[gpu]
            assert annotations["hami.io/vgpu-devices-to-allocate"] == f"{uuid},NVIDIA,10240,25:;"

    run(kube, scenario)


def test_preemption_evicts_and_recreates_the_pod_through_the_api(kube: ControlPlane) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(1, gpus=1))
        async with RunningController(str(kube.scheduler_kubeconfig), "las") as ctl:
            veteran = pod_manifest("old", WHOLE, annotations={ATTAINED_GPU_S: "50000"})
            await admin.create_pod(veteran)
            await eventually(lambda: _is_bound(admin, "old"), what="old bound")
            await admin.create_pod(pod_manifest("new", WHOLE))

            async def swapped():  # type: ignore[no-untyped-def]
                placed = {p["metadata"]["name"]: p for p in await admin.pods()}
                ready = "old" not in placed and "old-r1" in placed
                return ready and placed["new"]["spec"].get("nodeName") and placed

            placed = await eventually(swapped, timeout_s=30, what="old evicted, new placed")
            again = placed["old-r1"]
            notes = again["metadata"]["annotations"]
            assert not again["spec"].get("nodeName")
            assert (notes[JOB_ID], notes[RESTARTS]) == ("default/old", "1")
            assert float(notes[ATTAINED_GPU_S]) >= 50000
            assert ASSIGNED_GPUS not in notes
            assert ctl.scheduler.stats.evicted == 1

    run(kube, scenario)


async def _is_bound(admin: Admin, name: str) -> bool:
    return (await bound(admin, [name])) == [True]


def test_record_command_writes_a_replayable_trace(kube: ControlPlane, tmp_path: Path) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(1, gpus=2))
        recorder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from gpufleet.cli import main; raise SystemExit(main())",
            "controller",
            "record",
            "--out",
            str(tmp_path),
            "--duration",
            "6",
            "--kubeconfig",
            str(kube.scheduler_kubeconfig),
            stdin=asyncio.subprocess.DEVNULL,
        )
        async with RunningController(str(kube.scheduler_kubeconfig)):
            await asyncio.sleep(1.5)  # the recorder has listed
            await admin.create_pod(pod_manifest("observed", WHOLE, runtime="30s"))
            await eventually(lambda: _is_bound(admin, "observed"), what="bound")
            assert await asyncio.wait_for(recorder.wait(), 30) == 0
        (job,) = read_jobs(tmp_path / "jobs.csv")
        assert (job.id, job.task, job.work) == ("observed", WHOLE, FixedDuration(30.0))
        assert [n.name for n in read_nodes(tmp_path / "nodes.csv")] == ["node-000"]
        rows = (tmp_path / "placements.csv").read_text().splitlines()
        assert rows[1].startswith("observed,observed,node-000,0,1000,")

    run(kube, scenario)


def test_a_mixed_burst_never_asks_a_kubelet_for_more_gpus_than_it_has(
    kube: ControlPlane,
) -> None:
    """Under `--backend whole` the device plugin hands out whole GPUs: 12 half-GPU pods,
    6 one-GPU and 2 two-GPU pods (22 `nvidia.com/gpu` requested) on two 8-GPU nodes must
    leave every node's requested `nvidia.com/gpu` within its allocatable, as the kubelet
    counts it. (Before, the 12 half-GPU pods all went to one node: 12 of 8.)"""

    shapes = [TaskRequest(500, 512, 1, 500)] * 12 + [WHOLE] * 6
    shapes += [TaskRequest(1000, 1024, 2, 1000)] * 2

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(gpu_nodes(2, gpus=8))
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            for i, shape in enumerate(shapes):
                await admin.create_pod(pod_manifest(f"burst-{i:02d}", shape))
            await eventually(lambda: _bound_slots(admin, 16), 30, "16 GPUs bound")
            await ctl.settle()
        requested: dict[str, int] = {}
        for pod in await admin.pods():
            node = pod["spec"].get("nodeName")
            if node:
                limits = pod["spec"]["containers"][0]["resources"].get("limits") or {}
                requested[node] = requested.get(node, 0) + int(limits.get("nvidia.com/gpu", 0))
        assert requested == {"node-000": 8, "node-001": 8}

    run(kube, scenario)


async def _bound_slots(admin: Admin, want: int) -> bool:
    total = 0
    for pod in await admin.pods():
        if pod["spec"].get("nodeName"):
            limits = pod["spec"]["containers"][0]["resources"].get("limits") or {}
            total += int(limits.get("nvidia.com/gpu", 0))
    return total >= want
