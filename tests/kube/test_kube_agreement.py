"""Simulator ⇄ controller agreement: one small openb-like trace (300 tasks, 60 GPU nodes,
departures) replayed through `simulator.engine.Simulation` and through the controller
on the real API server; every task must land on the same node and the same GPUs.

The controller runs in real time, the trace in trace time, so a driver replays the trace
in lockstep: at each trace instant it pauses the scheduler, deletes the pods that
finish then and creates the pods that arrive then, waits until the controller's cache
has seen those writes, resumes it and waits until it is idle. That is exactly the
simulator's rule (all same-time arrivals and completions, then one scheduling pass).
The trace is generated here, never copied from shared data.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import heapq
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.encoders import WholeGpu
from controller.informer import Informer
from controller.objects import ASSIGNED_GPUS, ASSIGNED_MILLI
from controller.recorder import TraceRecorder
from controller.runtime import NON_TERMINAL, Controller
from controller.scheduler import SchedulerOptions
from policies import (
    FixedDuration,
    JobSpec,
    NodeSpec,
    Place,
    Placement,
    Policy,
    TaskRequest,
    make_policy,
)
from policies.base import Context, Snapshot
from policies.decisions import SchedulingResult
from simulator.engine import Simulation
from simulator.metrics import JOB_COLUMNS
from tests.kube.controlplane import ControlPlane
from tests.kube.helpers import Admin, RunningController, pod_manifest
from traces.canonical import read_jobs, read_nodes

pytestmark = pytest.mark.kube

MODELS = (
    ("A100", 8, 128_000, 786_432),
    ("V100", 8, 96_000, 393_216),
    ("T4", 2, 64_000, 262_144),
    ("P100", 4, 64_000, 262_144),
)


def openb_like(
    seed: int = 7, num_nodes: int = 60, num_tasks: int = 300
) -> tuple[list[NodeSpec], list[JobSpec]]:
    """Mixed GPU models, sharing and whole-GPU tasks, model constraints, CPU-only tasks;
    arrivals and durations in whole seconds, so same-time events happen."""
    rng = np.random.default_rng(seed)
    names = rng.permutation(num_nodes)
    nodes = []
    for i in range(num_nodes):
        model, gpus, cpu, mem = MODELS[i % len(MODELS)]
        nodes.append(NodeSpec(f"openb-node-{names[i]:04d}", cpu, mem, gpus, model))
    jobs = []
    submit = 0
    for i in range(num_tasks):
        submit += int(rng.integers(0, 3))
        kind = rng.choice(
            ["share", "one", "two", "four", "eight", "cpu"], p=[0.4, 0.25, 0.12, 0.1, 0.05, 0.08]
        )
        if kind == "share":
            task = TaskRequest(
                int(rng.integers(1, 8)) * 1000, 8192, 1, int(rng.integers(1, 19)) * 50
            )
        elif kind == "cpu":
            task = TaskRequest(int(rng.integers(2, 16)) * 1000, 16384)
        else:
            gpus = {"one": 1, "two": 2, "four": 4, "eight": 8}[kind]
            task = TaskRequest(gpus * 6000, gpus * 24576, gpus, 1000)
        allowed = None
        if task.num_gpus and rng.random() < 0.15:
            allowed = frozenset(["V100"]) if task.num_gpus > 2 else frozenset(["T4", "P100"])
        jobs.append(
            JobSpec(
                id=f"task-{i:04d}",
                submit_time=float(submit),
                task=task,
                work=FixedDuration(float(rng.integers(20, 400))),
                allowed_models=allowed,
                kind="pod",
            )
        )
    return nodes, jobs


class RecordingPolicy(Policy):
    """Delegates to a policy and notes each placement (test-side view of the simulator)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.config = inner.config
        self.round_s = inner.round_s
        self.placed: dict[str, tuple[float, Placement]] = {}

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        result = self.inner.schedule(snapshot, ctx)
        for decision in result.decisions:
            if isinstance(decision, Place):
                self.placed[decision.job_id] = (snapshot.now, decision.placement)
        return result


def simulate(
    nodes: list[NodeSpec], jobs: list[JobSpec], policy: str
) -> dict[str, tuple[float, str, tuple[int, ...], int]]:
    recording = RecordingPolicy(make_policy(policy))
    recorder = Simulation(nodes, jobs, recording).run()
    status = JOB_COLUMNS.index("status")
    assert all(row[status] == "completed" for row in recorder.jobs)
    return {
        job: (at, p.tasks[0].node, p.tasks[0].gpus, p.tasks[0].gpu_milli)
        for job, (at, p) in recording.placed.items()
    }


async def replay_through_controller(
    kube: ControlPlane, nodes: list[NodeSpec], jobs: list[JobSpec], policy: str, out: Path
) -> dict[str, tuple[float, str, tuple[int, ...], int]]:
    """Replays the trace; meanwhile `controller record` logic writes what it observed."""
    admin = Admin(str(kube.admin_kubeconfig))
    placed: dict[str, tuple[float, str, tuple[int, ...], int]] = {}
    recorder = TraceRecorder(WholeGpu())
    informers = [
        Informer(admin.api, "nodes", "/api/v1/nodes", recorder),
        Informer(admin.api, "pods", "/api/v1/pods", recorder, {"fieldSelector": NON_TERMINAL}),
    ]
    recording = [asyncio.create_task(i.run()) for i in informers]
    try:
        await admin.create_nodes(nodes)
        # Lockstep steps are short; coalescing passes would only slow the replay down.
        eager = SchedulerOptions(min_pass_interval_s=0.0)
        async with RunningController(
            str(kube.scheduler_kubeconfig), policy, scheduler=eager
        ) as ctl:
            await lockstep(admin, ctl, jobs, placed)
            await asyncio.wait_for(informers[1].wait_for_version(ctl.pods.resource_version), 30)
            recorder.write(out)
            # Every pod the API server bound carries what the controller says it chose.
            for pod in await admin.pods():
                name = pod["metadata"]["name"]
                notes = pod["metadata"]["annotations"]
                gpus = tuple(int(g) for g in notes[ASSIGNED_GPUS].split(",") if g)
                _, node, chosen, milli = placed[name]
                assert (pod["spec"]["nodeName"], gpus) == (node, chosen)
                assert int(notes[ASSIGNED_MILLI]) == milli
    finally:
        for task in recording:
            task.cancel()
        await asyncio.gather(*recording, return_exceptions=True)
        await admin.close()
    return placed


async def lockstep(
    admin: Admin, ctl: Controller, jobs: list[JobSpec], placed: dict[str, Any]
) -> None:
    scheduler = ctl.scheduler
    bound_now: list[Any] = []
    scheduler.on_bound = bound_now.append
    by_id = {job.id: job for job in jobs}
    events: list[tuple[float, int, int, str]] = []  # (time, 0=departure/1=arrival, seq, id)
    for seq, job in enumerate(sorted(jobs, key=lambda j: j.submit_time)):
        heapq.heappush(events, (job.submit_time, 1, seq, job.id))
    seq = len(jobs)
    uids: dict[str, str] = {}
    while events:
        now = events[0][0]
        scheduler.pause()
        versions = []
        departed = []
        while events and events[0][0] == now:
            _, kind, _, name = heapq.heappop(events)
            if kind == 0:
                await admin.delete_pod(name)
                departed.append(uids.pop(name))
            else:
                created = await admin.create_pod(
                    pod_manifest(name, by_id[name].task, allowed_models=by_id[name].allowed_models)
                )
                versions.append(created["metadata"]["resourceVersion"])
                uids[name] = created["metadata"]["uid"]
        if versions:
            await asyncio.wait_for(ctl.pods.wait_for_version(max(versions, key=int)), 30)
        gone = functools.partial(_all_gone, ctl, tuple(departed))
        await asyncio.wait_for(ctl.pods.wait_until(gone), 30)
        scheduler.resume()
        await asyncio.wait_for(scheduler.wait_idle(), 30)
        for record in bound_now:
            name = record.pod.name
            placed[name] = (now, record.node, record.gpus, record.gpu_milli)
            duration = by_id[name].work.total
            seq += 1
            heapq.heappush(events, (now + duration, 0, seq, name))
        bound_now.clear()


def _all_gone(ctl: Controller, uids: tuple[str, ...]) -> bool:
    return not any(uid in ctl.cache.pods for uid in uids)


@pytest.mark.parametrize("policy", ["bestfit", "fgd"])
def test_simulator_and_controller_place_every_task_identically(
    kube: ControlPlane, policy: str, tmp_path: Path
) -> None:
    nodes, jobs = openb_like()
    expected = simulate(nodes, jobs, policy)
    actual = asyncio.run(replay_through_controller(kube, nodes, jobs, policy, tmp_path))
    assert len(expected) == len(jobs)
    waited = sum(1 for job in jobs if expected[job.id][0] > job.submit_time)
    assert waited > 0, "the trace should make some tasks queue"
    mismatches = [(j, expected[j], actual.get(j)) for j in expected if expected[j] != actual.get(j)]
    assert not mismatches, mismatches[:5]
    check_recorded_trace(tmp_path, nodes, jobs, actual)


def check_recorded_trace(
    out: Path, nodes: list[NodeSpec], jobs: list[JobSpec], placed: dict[str, Any]
) -> None:
    """What `controller record` wrote is the trace's cluster and tasks, in arrival order,
    with the placements the controller made, and the simulator replays it to the end."""
    recorded_nodes = read_nodes(out / "nodes.csv")
    assert [(n.name, n.gpus, n.gpu_model) for n in recorded_nodes] == sorted(
        (n.name, n.gpus, n.gpu_model) for n in nodes
    )
    recorded = list(read_jobs(out / "jobs.csv"))
    by_id = {j.id: j for j in jobs}
    assert sorted(j.id for j in recorded) == sorted(by_id)
    assert all(j.task == by_id[j.id].task for j in recorded)
    assert all(j.allowed_models == by_id[j.id].allowed_models for j in recorded)
    arrival = [j.id for j in sorted(recorded, key=lambda j: j.submit_time)]
    assert arrival == [j.id for j in sorted(jobs, key=lambda j: j.submit_time)]
    with (out / "placements.csv").open() as handle:
        rows = {r["pod"]: (r["node"], r["gpus"]) for r in csv.DictReader(handle)}
    assert rows == {
        name: (node, ",".join(map(str, gpus))) for name, (_, node, gpus, _) in placed.items()
    }
    replay = Simulation(recorded_nodes, recorded, make_policy("bestfit")).run()
    status = JOB_COLUMNS.index("status")
    assert [row[status] for row in replay.jobs] == ["completed"] * len(jobs)
