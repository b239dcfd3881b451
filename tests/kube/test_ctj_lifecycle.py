"""ContinualTrainingJobs end to end on the real API server, with the controller run
exactly as the Deployment runs it: `python -m controller.serve serve` authenticating
with the ServiceAccount's token (RBAC applies), JSON logs, metrics on HTTP.

Three jobs share KWOK GPU nodes: one retrains in time every window, one asks for a GPU
model the cluster lacks (every window unschedulable), one runs longer than its
deadline (bound, then withdrawn). Their statuses, events, pods and the scraped metrics
must tell exactly that story. Deleting a job removes its pods through ownerReferences.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import NAME_LABEL
from controller.devcluster.fleet import Admin, pod_manifest
from controller.kube.objects import GANG_SIZE, POD_GROUP_LABEL, parse_time
from policies import NodeSpec, TaskRequest
from tests.kube.ctj_helpers import (
    LEASE,
    CtjEnvironment,
    ServeProcess,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    get_ctj,
    run,
    serving,
)
from tests.kube.helpers import eventually

pytestmark = pytest.mark.kube

NODES = [
    NodeSpec("a100-0", 64_000, 262_144, 4, "A100"),
    NodeSpec("a100-1", 64_000, 262_144, 4, "A100"),
    NodeSpec("t4-0", 32_000, 131_072, 2, "T4"),
]
ONE_GPU = TaskRequest(cpu_milli=1000, mem_mib=1024, num_gpus=1, gpu_milli=1000)


async def events_about(admin: Admin, ctj: dict[str, Any]) -> list[str]:
    """The reasons of the events about this very object: events outlive the objects
    of earlier tests, some of which had the same name (matched by uid, not name)."""
    listing = await admin.api.call("GET", "/apis/events.k8s.io/v1/namespaces/default/events")
    uid = ctj["metadata"]["uid"]
    return sorted(e["reason"] for e in listing["items"] if e.get("regarding", {}).get("uid") == uid)


def test_ctj_windows_are_placed_completed_missed_and_recorded(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(NODES)
        async with serving(ctj_env, tmp_path / "serve.log") as serve:
            before = serve.scrape()
            steady = await create_ctj(
                admin.api, ctj_manifest("steady", windows=3, gpu_models=("A100",))
            )
            await create_ctj(admin.api, ctj_manifest("starved", windows=2, gpu_models=("H100",)))
            await create_ctj(admin.api, ctj_manifest("slow", windows=2, runtime="60s"))
            # A plain-pod gang (scheduler-plugins label), not owned by any CTJ.
            for i in range(3):
                labels = {POD_GROUP_LABEL: "plain"}
                notes = {GANG_SIZE: "3"}
                await admin.create_pod(
                    pod_manifest(f"plain-{i}", ONE_GPU, labels=labels, annotations=notes)
                )

            async def all_completed() -> bool:
                jobs = [await get_ctj(admin.api, n) for n in ("steady", "starved", "slow")]
                return all((j or {}).get("status", {}).get("phase") == "Completed" for j in jobs)

            await eventually(all_completed, timeout_s=45, what="all three CTJs Completed")
            after = serve.scrape()
            await check_steady(admin, steady)
            await check_missed(admin, "starved", "Unschedulable")
            await check_missed(admin, "slow", "DeadlinePassed")
            pods = {p["metadata"]["name"]: p for p in await admin.pods()}
            assert all(pods[f"plain-{i}"]["spec"].get("nodeName") for i in range(3))
            check_metrics(before, after)
            assert serve.stop() == 0
        check_logs(serve)
        lease = await admin.api.call("GET", LEASE)
        assert lease["spec"]["holderIdentity"] == ""  # released on SIGTERM

    run(ctj_env, scenario)


async def check_steady(admin: Admin, created: dict[str, Any]) -> None:
    job = await get_ctj(admin.api, "steady")
    assert job is not None
    status = job["status"]
    assert (status["completedWindows"], status["missedDeadlines"]) == (3, 0)
    assert status["windowsRecorded"] == 3
    assert [h["outcome"] for h in status["history"]] == ["Completed"] * 3
    anchor = parse_time(created["metadata"]["creationTimestamp"])
    for h in status["history"]:
        # Window k opens at creation + 5k s; it was retrained within its 3 s deadline.
        finished = parse_time(h["finishedAt"])
        assert anchor + 5 * h["index"] <= finished <= anchor + 5 * h["index"] + 3, h
    assert status["lastRetrainTime"] == status["history"][-1]["finishedAt"]
    assert status["currentWindow"]["index"] == 2
    nodes = {p["node"] for p in status["placements"]}
    assert len(status["placements"]) == 2 and nodes <= {"a100-0", "a100-1"}
    condition = {c["type"]: c for c in status["conditions"]}["DeadlineMet"]
    assert (condition["status"], condition["reason"]) == ("True", "RetrainedInTime")

    # historyLimit 1: only the last window's pods are kept, finished (older ones are
    # deleted right after the status that records the last window is written).
    async def kept() -> list[dict[str, Any]] | None:
        pods = await admin.pods()
        mine = [p for p in pods if p["metadata"]["labels"].get(NAME_LABEL) == "steady"]
        names = sorted(p["metadata"]["name"] for p in mine)
        return mine if names == ["steady-w2-0", "steady-w2-1"] else None

    mine = await eventually(kept, timeout_s=20, what="only window 2's pods kept")
    assert {p["status"]["phase"] for p in mine} == {"Succeeded"}
    assert await events_about(admin, job) == ["RetrainCompleted"] * 3


async def check_missed(admin: Admin, name: str, reason: str) -> None:
    job = await get_ctj(admin.api, name)
    assert job is not None
    status = job["status"]
    assert (status["completedWindows"], status["missedDeadlines"]) == (0, 2)
    assert [(h["index"], h["reason"]) for h in status["history"]] == [(0, reason), (1, reason)]
    assert "lastRetrainTime" not in status
    condition = {c["type"]: c for c in status["conditions"]}["DeadlineMet"]
    assert (condition["status"], condition["reason"]) == ("False", reason)
    assert await events_about(admin, job) == ["DeadlineMissed"] * 2

    # The unfinished pods of a missed window are withdrawn (after the status is written).
    async def withdrawn() -> bool:
        return not [
            p for p in await admin.pods() if p["metadata"]["labels"].get(NAME_LABEL) == name
        ]

    await eventually(withdrawn, timeout_s=5, what=f"{name}'s pods withdrawn")


def check_metrics(before: dict[str, float], after: dict[str, float]) -> None:
    def moved(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    # steady 3 windows x 2 pods, slow 2 x 2, the plain gang 3; starved never binds.
    assert moved("gpufleet_bindings_total{}") == 13
    assert moved('gpufleet_scheduling_attempts_total{result="scheduled"}') >= 6
    assert moved('gpufleet_scheduling_attempts_total{result="unschedulable"}') >= 2
    assert moved('gpufleet_scheduling_failures_total{reason="unschedulable"}') >= 2
    assert moved("gpufleet_pod_scheduling_duration_seconds_count{}") == 13
    assert moved("gpufleet_scheduling_pass_duration_seconds_count{}") >= 6
    assert moved('gpufleet_ctj_reconciles_total{result="ok"}') > 0
    assert after['gpufleet_ctj_deadline_misses_total{name="starved",namespace="default"}'] == 2
    assert after['gpufleet_ctj_deadline_misses_total{name="slow",namespace="default"}'] == 2
    assert after['gpufleet_ctj_deadline_misses_total{name="steady",namespace="default"}'] == 0
    assert after['gpufleet_ctj_windows_completed_total{name="steady",namespace="default"}'] == 3
    assert after["gpufleet_pending_pods{}"] == 0
    assert [v for k, v in after.items() if k.startswith("gpufleet_leader")] == [1.0]


def check_logs(serve: ServeProcess) -> None:
    entries = serve.log_entries()  # every line is one JSON object
    missed = [e for e in entries if e.get("ctj") == "default/slow" and e.get("outcome") == "Missed"]
    assert [e["window"] for e in missed] == [0, 1]
    assert all(e["level"] == "WARNING" and e["reason"] == "DeadlinePassed" for e in missed)


def test_deleting_a_ctj_removes_its_pods(ctj_env: CtjEnvironment, tmp_path: Path) -> None:  # noqa: F811
    """With the controller stopped, so only the ownerReferences (and the garbage
    collector in kube-controller-manager) can remove them."""

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(NODES[:1])
        async with serving(ctj_env, tmp_path / "serve.log") as serve:
            await create_ctj(admin.api, ctj_manifest("doomed", window_s=600, runtime="600s"))

            async def running() -> bool:
                pods = await admin.pods()
                return len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)

            await eventually(running, what="the window's pods running")
            assert serve.stop() == 0
        started = time.monotonic()
        await admin.api.call(
            "DELETE",
            "/apis/ctj.gpufleet.io/v1alpha1/namespaces/default/continualtrainingjobs/doomed",
        )

        async def gone() -> bool:
            return not await admin.pods()

        await eventually(gone, timeout_s=60, what="the garbage collector deleting the pods")
        print(f"pods garbage-collected {time.monotonic() - started:.1f}s after the CTJ")

    run(ctj_env, scenario)
