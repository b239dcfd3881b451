"""Malformed objects on the real API server: 500 pods and 50 ContinualTrainingJobs, a
quarter of them broken in a randomly chosen field, under one policy of each family
(placement, preemptive, rounds, continual), with the controller run as the Deployment
runs it (the Manager, leader election on, the CTJ reconciler, the ServiceAccount's RBAC).

What must hold: every valid pod binds; every malformed pod stays pending with a
FailedScheduling Event naming its field, and is counted once in the rejected-objects
counter; every malformed CTJ the server accepts gets `ScheduleValid=False` naming its
field, every one the server refuses is refused naming the field; every valid CTJ gets
its pods placed; no controller task dies; no GPU is handed out twice.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from controller.ctj.crd import NAME_LABEL
from controller.devcluster.fleet import NAMESPACE, Admin, pod_manifest
from controller.devcluster.install import SYSTEM_NAMESPACE
from controller.devcluster.launcher import ControlPlane
from controller.kube.kubeapi import KubeApi
from controller.kube.leader import LeaseConfig
from controller.kube.objects import ASSIGNED_GPUS, ASSIGNED_MILLI, PodRecord
from controller.manager import Manager, ManagerOptions
from controller.runtime import ControllerOptions
from controller.scheduling.scheduler import SchedulerOptions
from policies import MILLI, NodeSpec, TaskRequest, make_policy
from tests.kube.ctj_helpers import (
    CTJS,
    CtjEnvironment,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
)
from tests.kube.helpers import eventually

pytestmark = pytest.mark.kube

PODS = 500
CTJ_COUNT = 50
NODES = [NodeSpec(f"fuzz-{i:02d}", 96_000, 393_216, 8, ("A100", "V100")[i % 2]) for i in range(64)]
SHAPES = (
    TaskRequest(1000, 1024, 1, MILLI),
    TaskRequest(1000, 1024, 2, MILLI),
    TaskRequest(500, 512, 1, 500),
    TaskRequest(500, 512),
)
# Annotations a user may write wrong; the controller must name the field.
BAD_ANNOTATIONS = {
    "gpufleet.io/attained-gpu-s": ["abc", "-5", "nan", "1e400", "１２"],
    "gpufleet.io/restarts": ["1.5", "-1", "many", "٣"],
    "gpufleet.io/gang-size": ["0", "abc", "99999999999"],
    "gpufleet.io/gpu-milli": ["1500", "0", "half"],
    "gpufleet.io/sim-runtime": ["forever", "-5s", "0s"],
    "gpufleet.io/submit-time": ["yesterday", "inf"],
    "gpufleet.io/gpu-models": ["|", " | "],
}
# Fields the API server itself refuses (the object never exists).
SERVER_REFUSED = (
    "spec.containers[0].resources.requests[cpu]",
    "spec.nodeSelector",
    "metadata.labels",
)


def pods(rng: random.Random) -> list[tuple[dict[str, Any], str]]:
    """(manifest, the field broken or "") for each pod."""
    out = []
    for i in range(PODS):
        manifest = pod_manifest(f"fuzz-{i:03d}", rng.choice(SHAPES))
        broken = _break_pod(manifest, rng) if rng.random() < 0.25 else ""
        out.append((manifest, broken))
    return out


def _break_pod(manifest: dict[str, Any], rng: random.Random) -> str:
    if rng.random() < 0.8:
        key = rng.choice(sorted(BAD_ANNOTATIONS))
        manifest["metadata"]["annotations"][key] = rng.choice(BAD_ANNOTATIONS[key])
        return f"metadata.annotations[{key}]"
    field = rng.choice(SERVER_REFUSED)
    if field.startswith("spec.containers"):
        manifest["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "1.5.3"
    elif field == "spec.nodeSelector":
        manifest["spec"]["nodeSelector"] = {"zone": "not a valid value!"}
    else:
        manifest["metadata"]["labels"]["bad key!"] = "x"
    return field


def ctjs(rng: random.Random) -> list[tuple[dict[str, Any], str]]:
    out = []
    for i in range(CTJ_COUNT):
        manifest = ctj_manifest(f"fuzz-ctj-{i:02d}", window_s=600, deadline_s=300, replicas=1)
        broken = _break_ctj(manifest["spec"], rng) if rng.random() < 0.25 else ""
        out.append((manifest, broken))
    return out


def _break_ctj(spec: dict[str, Any], rng: random.Random) -> str:
    retrain = spec["retrain"]
    choice = rng.randrange(5)
    if choice == 0:  # passes the schema's pattern, but no minute 61 exists
        del retrain["windowSeconds"]
        retrain["schedule"] = "61 * * * *"
        return "spec.retrain"
    if choice == 1:
        retrain["deadlineSeconds"] = -5
        return "spec.retrain.deadlineSeconds"
    if choice == 2:
        del spec["image"]
        return "spec.image"
    if choice == 3:
        spec["resources"]["gpu"]["milli"] = 5000
        return "spec.resources.gpu.milli"
    spec["replicas"]["min"] = "two"
    return "spec.replicas.min"


@pytest.mark.parametrize("policy", ["bestfit", "las", "gavel", "thief"])
def test_malformed_objects_are_set_aside_and_everyone_else_is_served(
    kube: ControlPlane,
    ctj_env: CtjEnvironment,  # noqa: F811
    policy: str,
) -> None:
    rng = random.Random(f"fuzz-{policy}")
    pod_cases, ctj_cases = pods(rng), ctjs(rng)

    async def main() -> None:
        admin = Admin(str(kube.admin_kubeconfig))
        api = ctj_env.sa_api()
        manager = Manager(api, make_policy(policy), _options())
        bound: list[PodRecord] = []
        manager.controller.scheduler.on_bound = lambda record: bound.append(record.pod)
        running = asyncio.create_task(manager.run())
        try:
            await admin.create_nodes(NODES)
            await asyncio.wait_for(manager.leading.wait(), 30)
            refused = await _create(admin, pod_cases, ctj_cases)
            await _check(admin, manager, pod_cases, ctj_cases, refused, bound)
            assert not running.done() and manager.supervisor.dead() == []
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await api.close()
            await admin.close()

    asyncio.run(main())


def _options() -> ManagerOptions:
    lease = LeaseConfig(namespace=SYSTEM_NAMESPACE, lease_duration_s=6, renew_deadline_s=4)
    scheduler = SchedulerOptions(round_s=10.0)  # rounds often enough for a test
    return ManagerOptions(
        controller=ControllerOptions(scheduler=scheduler), lease=lease, probe_port=None
    )


async def _create(
    admin: Admin, pod_cases: list[tuple[dict[str, Any], str]], ctj_cases: list[Any]
) -> dict[str, str]:
    """Create everything; returns name → the server's message for objects it refused."""
    refused: dict[str, str] = {}
    gate = asyncio.Semaphore(16)

    async def create(path: str, manifest: dict[str, Any]) -> None:
        async with gate:
            status, answer = await admin.api.request("POST", path, body=manifest)
        if status in (400, 422):  # 400: a quantity the server cannot even decode
            refused[manifest["metadata"]["name"]] = str(answer.get("message", ""))
        else:
            assert status == 201, (manifest["metadata"]["name"], status, answer)

    pod_path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    await asyncio.gather(*(create(pod_path, m) for m, _ in pod_cases))
    await asyncio.gather(*(create(CTJS, m) for m, _ in ctj_cases))
    return refused


async def _check(
    admin: Admin,
    manager: Manager,
    pod_cases: list[tuple[dict[str, Any], str]],
    ctj_cases: list[tuple[dict[str, Any], str]],
    refused: dict[str, str],
    bound: list[PodRecord],
) -> None:
    valid = {m["metadata"]["name"] for m, broken in pod_cases if not broken}
    ctj_valid = {m["metadata"]["name"] for m, broken in ctj_cases if not broken}

    async def all_bound() -> bool:
        # Bound at least once: Gavel moves jobs between GPU models every round, so at any
        # one moment some pods are being evicted and recreated.
        owners = {pod.labels.get(NAME_LABEL) for pod in bound}
        return valid <= {pod.name for pod in bound} and ctj_valid <= owners

    await eventually(all_bound, 180, "every valid pod and one pod of every valid CTJ bound")
    everything = await admin.pods()
    _no_gpu_twice(everything)
    by_name = {p["metadata"]["name"]: p for p in everything}
    notes = await _event_notes(admin.api)
    for manifest, field in pod_cases:
        name = manifest["metadata"]["name"]
        if field and name in refused:
            assert _names(refused[name], field), (name, field, refused[name])
        elif field:
            assert not by_name[name]["spec"].get("nodeName"), name
            assert any(field in note for note in notes[name]), (name, field, notes[name])
    broken_pods = sum(1 for m, f in pod_cases if f and m["metadata"]["name"] not in refused)
    rejected = Counter(kind for (kind, _), n in manager.quarantine.counts.items() for _ in range(n))
    assert rejected["Pod"] == broken_pods  # each once, however many passes ran
    await _check_ctjs(admin, ctj_cases, refused)


def _no_gpu_twice(pods_now: list[dict[str, Any]]) -> None:
    used: Counter[tuple[str, int]] = Counter()
    holders: dict[tuple[str, int], list[str]] = {}
    for pod in pods_now:
        notes = pod["metadata"].get("annotations") or {}
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if pod["spec"].get("nodeName") and notes.get(ASSIGNED_GPUS) and not finished:
            for gpu in notes[ASSIGNED_GPUS].split(","):
                where = (pod["spec"]["nodeName"], int(gpu))
                used[where] += int(notes[ASSIGNED_MILLI])
                holders.setdefault(where, []).append(pod["metadata"]["name"])
    over = {where: holders[where] for where, milli in used.items() if milli > MILLI}
    assert not over, over


def _names(message: str, field: str) -> bool:
    """The server's message names the field; a quantity it cannot even decode (HTTP 400)
    is named by what it is, as the server's decoder stops before it knows the path."""
    if field.endswith("[cpu]"):
        return "quantities must match" in message
    return field in message


async def _event_notes(api: KubeApi) -> dict[str, list[str]]:
    items, _ = await api.list_all(f"/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events")
    notes: dict[str, list[str]] = {}
    for event in items:
        regarding = event.get("regarding") or {}
        notes.setdefault(regarding.get("name", ""), []).append(event.get("note", ""))
    return notes


async def _check_ctjs(
    admin: Admin, ctj_cases: list[tuple[dict[str, Any], str]], refused: dict[str, str]
) -> None:
    items, _ = await admin.api.list_all(CTJS)
    served = {c["metadata"]["name"]: c for c in items}
    for manifest, field in ctj_cases:
        name = manifest["metadata"]["name"]
        if not field:
            assert name in served, name
            continue
        if name in refused:
            assert _names(refused[name], field), (name, field, refused[name])
            continue

        async def condition(name: str = name) -> dict[str, Any] | None:
            items, _ = await admin.api.list_all(CTJS)
            status = next(c for c in items if c["metadata"]["name"] == name).get("status") or {}
            found = {c["type"]: c for c in status.get("conditions") or ()}
            return found.get("ScheduleValid")

        valid = await eventually(condition, 30, f"{name}'s ScheduleValid condition")
        assert valid["status"] == "False" and field in valid["message"], (name, field, valid)
