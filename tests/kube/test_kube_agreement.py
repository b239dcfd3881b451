"""Simulator ⇄ controller agreement on the real API server, for every registered policy.

One shared trace, generated here (never copied from shared data): 12 nodes of four GPU
models, 80 jobs (60 for Sia and Gavel) arriving at distinct whole seconds: fractional
pods, 1- and 2-GPU pods, CPU-only pods and gangs of 2–4 pods of 1 or 2 GPUs (one job
under the `gpufleet.io/job` label with `gpufleet.io/gang-size`), some limited to GPU
models. It is loaded well beyond the cluster, so jobs queue, LAS preempts on demotions
and Sia's and Gavel's rounds move and preempt jobs. Each policy replays it through
`simulator.engine.Simulation` and through the controller, and both must take the same
decisions at the same trace instants (every Place, Preempt, Resize and Unschedulable)
and carry out the same placements.

The controller runs in real time, the trace in trace time, so a driver replays the trace
in lockstep. The scheduler's clock is the trace clock (`Scheduler.clock`), and it asks
the policy only when the driver calls `Scheduler.request_round` (`external_rounds`):
exactly where the simulator runs a pass, after every same-time arrival and completion
(arrivals and completions for event-driven policies, every `round_s` for round-based
ones, and whenever a policy asked to be woken). At each instant the driver pauses the
scheduler, deletes the pods of jobs that finish and creates those that arrive, waits
until the cache has seen it, asks for the pass if one is due, resumes, and waits until
every bind, eviction, recreation and plan has been carried out and seen by the cache.

Jobs in the controller are pods: a preempted job's pods are deleted and recreated under
new names (`-r<N>`) that carry its id, submit time, attained service (total and per GPU
model) and restart count, so decisions are compared per job, not per pod. The driver is
the controller side's ground truth for progress: a job finishes when its remaining work
has run, which is the simulator's rule too with no restart delay (`restart_cost_s=0`:
pods have none).
"""

from __future__ import annotations

import asyncio
import csv
import functools
import heapq
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.devcluster.fleet import NAMESPACE, Admin, node_manifest, pod_manifest
from controller.devcluster.launcher import ControlPlane
from controller.kube.informer import Informer
from controller.kube.objects import GANG_SIZE, GPU_COUNT_LABEL, GPU_RESOURCE, JOB_LABEL, SUBMIT_TIME
from controller.recorder import TraceRecorder
from controller.runtime import DRA_PATHS, NON_TERMINAL, Controller
from controller.scheduling.encoders import Hami
from controller.scheduling.scheduler import BindRecord, SchedulerOptions
from controller.scheduling.workload import build_workload, job_id
from policies import (
    FixedDuration,
    JobSpec,
    NodeSpec,
    Place,
    Policy,
    Preempt,
    Resize,
    TaskRequest,
    make_policy,
    policy_names,
)
from policies.base import Context, Snapshot
from policies.decisions import Decision, SchedulingResult, Unschedulable
from policies.registry import policy_class
from simulator.engine import EngineOptions, Simulation
from simulator.metrics import JOB_COLUMNS
from tests.kube.helpers import RunningController
from traces.canonical import read_jobs, read_nodes

pytestmark = pytest.mark.kube

MODELS = (
    ("A100", 8, 128_000, 786_432),
    ("V100", 8, 96_000, 393_216),
    ("T4", 2, 64_000, 262_144),
    ("P100", 4, 64_000, 262_144),
)
KINDS = ("share", "one", "two", "cpu", "gang")

Tasks = tuple[tuple[str, tuple[int, ...], int], ...]
"""A placement as compared: (node, GPU indices, milli-GPU) per task, in task order."""
Decided = tuple[str, str, Tasks]
Pass = tuple[float, tuple[Decided, ...]]
PodMaker = Callable[[JobSpec], list[dict[str, Any]]]
"""A job's pod manifests."""
ClusterMaker = Callable[[Admin, list[NodeSpec]], Awaitable[None]]
"""Creates the trace's nodes (and whatever publishes their GPUs)."""


def mixed_trace(
    seed: int = 11, num_nodes: int = 12, num_jobs: int = 80
) -> tuple[list[NodeSpec], list[JobSpec]]:
    """Every pod shape the controller places, arriving at distinct whole seconds (a job
    preempted live keeps its submit time but not its place among same-time arrivals),
    with durations in whole seconds, so completions coincide with arrivals and rounds."""
    rng = np.random.default_rng(seed)
    names = rng.permutation(num_nodes)
    nodes = []
    for i in range(num_nodes):
        model, gpus, cpu, mem = MODELS[i % len(MODELS)]
        labels = {GPU_COUNT_LABEL: str(gpus)}  # HAMi reads the physical count here
        nodes.append(NodeSpec(f"node-{names[i]:03d}", cpu, mem, gpus, model, labels=labels))
    jobs = []
    submit = 0
    for i in range(num_jobs):
        submit += int(rng.integers(1, 25))
        kind = rng.choice(KINDS, p=[0.25, 0.25, 0.2, 0.1, 0.2])
        replicas = int(rng.integers(2, 5)) if kind == "gang" else 1
        if kind == "share":
            task = TaskRequest(
                int(rng.integers(1, 8)) * 1000, 8192, 1, int(rng.integers(1, 19)) * 50
            )
        elif kind == "cpu":
            task = TaskRequest(int(rng.integers(2, 16)) * 1000, 16384)
        else:
            gpus = {"one": 1, "two": 2}.get(kind) or int(rng.integers(1, 3))
            task = TaskRequest(gpus * 6000, gpus * 24576, gpus, 1000)
        allowed = None
        if task.num_gpus and rng.random() < 0.15:
            models = ["A100", "V100"] if replicas > 1 else ["T4", "P100"]
            allowed = frozenset(models)
        jobs.append(
            JobSpec(
                id=f"{NAMESPACE}/job-{i:04d}",
                submit_time=float(submit),
                task=task,
                work=FixedDuration(float(rng.integers(200, 2400))),
                replicas=replicas,
                allowed_models=allowed,
                kind="pod",
            )
        )
    return nodes, jobs


def decided(decision: Decision) -> Decided:
    if isinstance(decision, Place | Resize):
        tasks = tuple((t.node, t.gpus, t.gpu_milli) for t in decision.placement.tasks)
        return (type(decision).__name__, decision.job_id, tasks)
    assert isinstance(decision, Preempt | Unschedulable), decision
    return (type(decision).__name__, decision.job_id, ())


def as_pass(now: float, result: SchedulingResult) -> Pass:
    # Sorted: the hosts list running jobs started in one pass in different orders
    # (decision order, job id), which changes the order of a pass's decisions only.
    return now, tuple(sorted(decided(d) for d in result.decisions))


class RecordingPolicy(Policy):
    """Delegates to a policy and notes each pass (test-side view of the simulator)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.config = inner.config
        self.round_s = inner.round_s
        self.passes: list[Pass] = []

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        result = self.inner.schedule(snapshot, ctx)
        self.passes.append(as_pass(snapshot.now, result))
        return result


def simulate(nodes: list[NodeSpec], jobs: list[JobSpec], policy: str) -> list[Pass]:
    recording = RecordingPolicy(make_policy(policy))
    # Pods restart at once: no restart delay, as the controller's recreated pods have none.
    recorder = Simulation(nodes, jobs, recording, EngineOptions(restart_cost_s=0.0)).run()
    status = JOB_COLUMNS.index("status")
    assert [row[status] for row in recorder.jobs] == ["completed"] * len(jobs)
    return [p for p in recording.passes if p[1]]


def placements(passes: Sequence[Pass]) -> dict[str, list[tuple[float, Tasks]]]:
    """Per job, where it was started or moved to, and when."""
    started: dict[str, list[tuple[float, Tasks]]] = {}
    for now, decisions in passes:
        for kind, job, tasks in decisions:
            if kind in ("Place", "Resize"):
                started.setdefault(job, []).append((now, tasks))
    return started


def stops(passes: Sequence[Pass]) -> dict[str, int]:
    """Per job, how often it was preempted or resized (each one an eviction live)."""
    count: dict[str, int] = {}
    for _, decisions in passes:
        for kind, job, _ in decisions:
            if kind in ("Preempt", "Resize"):
                count[job] = count.get(job, 0) + 1
    return count


@dataclass
class TraceClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class LiveJob:
    """The driver's ground truth for one job in the controller host."""

    spec: JobSpec
    done: float = 0.0
    started: float | None = None
    epoch: int = 0
    pods: tuple[str, ...] = ()
    placed: list[tuple[float, Tasks]] = field(default_factory=list)
    restarts: int = 0
    """Evictions so far, as its latest pods say (`gpufleet.io/restarts`)."""


def after(now: float, delay: float) -> float:
    """The instant simpy gives `timeout(delay)` at `now`: the same float steps as the
    simulator's events, so both hosts meet at bit-identical instants."""
    return now + delay


class Lockstep:
    """Replays jobs through a running controller, pass for pass as the simulator."""

    def __init__(
        self,
        admin: Admin,
        ctl: Controller,
        clock: TraceClock,
        jobs: list[JobSpec],
        make_pods: PodMaker | None = None,
    ) -> None:
        self.make_pods = make_pods or manifests
        self.admin = admin
        self.ctl = ctl
        self.scheduler = ctl.scheduler
        self.clock = clock
        self.jobs = {job.id: LiveJob(job) for job in jobs}
        self.passes: list[Pass] = []
        self.bound: list[BindRecord] = []
        self.pods_bound: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.round_s = self.scheduler.policy.round_s
        self._results: list[SchedulingResult] = []
        self._events: list[tuple[float, int, str, str, int]] = []
        self._seq = 0
        self._wake_at: float | None = None
        self._evicted = 0
        self.scheduler.on_pass = lambda result, _seconds: self._results.append(result)
        self.scheduler.on_bound = self.bound.append

    def _push(self, at: float, kind: str, jid: str, epoch: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, jid, epoch))

    async def run(self) -> None:
        for job in self.jobs.values():
            self._push(job.spec.submit_time, "arrive", job.spec.id)
        tick = 0.0 if self.round_s is not None else math.inf
        unfinished = len(self.jobs)
        while unfinished:
            now = min(self._events[0][0] if self._events else math.inf, tick)
            now = min(now, self._wake_at if self._wake_at is not None else math.inf)
            assert now < math.inf, f"{unfinished} jobs can never finish"
            due = now == tick
            if due:
                assert self.round_s is not None
                tick = after(tick, self.round_s)
            if now == self._wake_at:
                due, self._wake_at = True, None
            arrive, complete = [], []
            while self._events and self._events[0][0] == now:
                _, _, kind, jid, epoch = heapq.heappop(self._events)
                live = self.jobs[jid]
                if kind == "arrive":
                    arrive.append(live)
                elif epoch == live.epoch and live.started is not None:
                    complete.append(live)
            unfinished -= len(complete)
            # Event-driven policies get a pass after arrivals and completions.
            due |= self.round_s is None and bool(arrive or complete)
            await self.step(now, arrive, complete, due)

    async def step(
        self, now: float, arrive: list[LiveJob], complete: list[LiveJob], due: bool
    ) -> None:
        self.scheduler.pause()
        self.clock.now = now
        versions: list[str] = []
        departed: list[str] = []
        for live in complete:
            departed += [pod.uid for pod in self.ctl.cache.running.pods_of(live.spec.id)]
            for name in live.pods:
                await self.admin.delete_pod(name)
            live.started = None
        for live in arrive:
            for manifest in self.make_pods(live.spec):
                created = await self.admin.create_pod(manifest)
                versions.append(created["metadata"]["resourceVersion"])
        if versions:
            await _within(self.ctl.pods.wait_for_version(max(versions, key=int)))
            await _within(self._claims_made())
        gone = functools.partial(_all_gone, self.ctl, tuple(departed))
        await _within(self.ctl.pods.wait_until(gone))
        await _within(self._claims_freed())
        if due:
            self.scheduler.request_round()
        self.scheduler.resume()
        await self.settle()
        self.observe(now)

    async def _claims_made(self) -> None:
        """Until no arrived pod waits for its DRA claims (kube-controller-manager makes
        them from templates; the simulator's jobs need no such step)."""
        cache = self.ctl.cache
        while build_workload(cache.pending_pods(), cache.seq, cache.encoder, cache.dra).waiting:
            await asyncio.sleep(0.05)

    async def _claims_freed(self) -> None:
        """Until kube-controller-manager has let go of the DRA claims of departed pods
        (the simulator frees a finished job's GPUs at once; a cluster frees a claim's
        devices when its controller deallocates it)."""
        cache = self.ctl.cache

        def held_for_nobody() -> bool:
            return any(
                claim.allocated is not None
                and all(r.uid not in cache.pods for r in claim.reserved_for)
                for claim in cache.dra.claims.values()
            )

        while held_for_nobody():
            await asyncio.sleep(0.05)

    async def settle(self) -> None:
        """Until every bind, eviction, recreation and plan of this instant is done and
        the cache has seen it all."""
        cache = self.ctl.cache
        while True:
            await _within(self.scheduler.wait_idle())
            if self.scheduler.stats.evicted != self._evicted:
                # Evictions wrote pods the cache must see before plans can be bound.
                self._evicted = self.scheduler.stats.evicted
                listed, version = await self.admin.api.list_all(
                    f"/api/v1/namespaces/{NAMESPACE}/pods"
                )
                seen = functools.partial(_caught_up, self.ctl, listed, int(version))
                await _within(self.ctl.pods.wait_until(seen))
                await _within(self._claims_freed())  # the evicted pods' devices
                await _within(self._claims_made())  # and the recreated pods' claims
            elif cache.assumed:
                await _within(self.ctl.pods.wait_until(lambda: not cache.assumed))
            else:
                return

    def observe(self, now: float) -> None:
        assert len(self._results) <= 1, "one decision pass per instant"
        for result in self._results:
            if result.decisions:
                self.passes.append(as_pass(now, result))
            for decision in result.decisions:
                if isinstance(decision, Preempt | Resize):
                    self._stop(self.jobs[decision.job_id], now)
            self._wake(now, result.wake_at)
        self._results.clear()
        by_job: dict[str, list[BindRecord]] = {}
        for record in self.bound:
            by_job.setdefault(job_id(record.pod), []).append(record)
            self.pods_bound[record.pod.name] = (record.node, record.gpus)
        self.bound.clear()
        for jid, records in by_job.items():
            self._start(self.jobs[jid], sorted(records, key=lambda r: r.pod.name), now)

    def _stop(self, live: LiveJob, now: float) -> None:
        # The simulator's JobRun.sync with rate 1.0 (FixedDuration), step for step.
        assert live.started is not None
        if now > live.started:
            live.done = min(live.spec.work.total, live.done + 1.0 * (now - live.started))
        live.started = None
        live.epoch += 1

    def _start(self, live: LiveJob, records: list[BindRecord], now: float) -> None:
        assert len(records) == live.spec.replicas, f"{live.spec.id}: partly bound"
        assert live.started is None, f"{live.spec.id}: bound while running"
        live.started = now
        live.pods = tuple(r.pod.name for r in records)
        live.restarts = records[0].pod.meta.restarts
        live.placed.append((now, tuple((r.node, r.gpus, r.gpu_milli) for r in records)))
        finish = now + (live.spec.work.total - live.done) / 1.0
        self._push(after(now, finish - now), "complete", live.spec.id, live.epoch)

    def _wake(self, now: float, wake_at: float | None) -> None:
        """The simulator's rule: the earliest requested wake-up stands."""
        if wake_at is None or wake_at <= now:
            return
        if self._wake_at is not None and now < self._wake_at <= wake_at:
            return
        self._wake_at = after(now, wake_at - now)


def hami_node(spec: NodeSpec) -> dict[str, Any]:
    """A node as HAMi shows it: `nvidia.com/gpu` counts vGPU slots, 20 per GPU (the
    trace's finest share is 50 milli, so slots never run out before the GPUs do)."""
    manifest = node_manifest(spec)
    for resources in manifest["status"].values():
        resources[GPU_RESOURCE] = str(20 * spec.gpus)
    return manifest


def manifests(spec: JobSpec) -> list[dict[str, Any]]:
    """The job's pods: one pod named after it, or a gang of `replicas` pods under the
    job label; each says its submit time."""
    name = spec.id.split("/", 1)[1]
    notes = {SUBMIT_TIME: repr(spec.submit_time)}
    pod = functools.partial(pod_manifest, task=spec.task, allowed_models=spec.allowed_models)
    if spec.replicas == 1:
        return [pod(name, annotations=notes)]
    notes[GANG_SIZE] = str(spec.replicas)
    labels = {JOB_LABEL: name}
    return [pod(f"{name}-{i}", labels=labels, annotations=notes) for i in range(spec.replicas)]


async def _within(work: Any, timeout_s: float = 30.0) -> None:
    await asyncio.wait_for(work, timeout_s)


def _all_gone(ctl: Controller, uids: tuple[str, ...]) -> bool:
    return not any(uid in ctl.cache.pods for uid in uids)


def _caught_up(ctl: Controller, listed: list[dict[str, Any]], version: int) -> bool:
    """The cache has seen every pod change up to a LIST at `version`: each listed pod in
    its listed state or later (or deleted since), and no pod the LIST no longer had."""
    pods, seen = ctl.cache.pods, int(ctl.pods.resource_version or 0)
    listed_at = {p["metadata"]["uid"]: int(p["metadata"]["resourceVersion"]) for p in listed}
    for uid, pod in pods.items():
        stale = uid not in listed_at and int(pod.resource_version) <= version
        if pod.namespace == NAMESPACE and stale:
            return False
    return all(
        int(pods[uid].resource_version) >= at if uid in pods else seen >= at
        for uid, at in listed_at.items()
    )


async def replay_through_controller(
    kube: ControlPlane,
    nodes: list[NodeSpec],
    jobs: list[JobSpec],
    policy: str,
    out: Path,
    cluster: ClusterMaker | None = None,
    make_pods: PodMaker | None = None,
) -> Lockstep:
    """Replays the trace; meanwhile `controller record` logic writes what it observed.
    `cluster` creates the nodes (default: HAMi nodes), `make_pods` a job's pods."""
    admin = Admin(str(kube.admin_kubeconfig))
    recorder = TraceRecorder(Hami())
    informers = [
        Informer(admin.api, "nodes", "/api/v1/nodes", recorder),
        Informer(admin.api, "pods", "/api/v1/pods", recorder, {"fieldSelector": NON_TERMINAL}),
        *(Informer(admin.api, kind, path, recorder) for kind, path in DRA_PATHS),
    ]
    recording = [asyncio.create_task(i.run()) for i in informers]
    try:
        if cluster is not None:
            await cluster(admin, nodes)
        else:
            for node in nodes:
                await admin.api.call("POST", "/api/v1/nodes", body=hami_node(node))
        options = SchedulerOptions(
            min_pass_interval_s=0.0, external_rounds=True, report_unschedulable=False
        )
        running = RunningController(
            str(kube.scheduler_kubeconfig), policy, backend="hami", scheduler=options
        )
        clock = TraceClock()
        running.controller.scheduler.clock = clock
        async with running as ctl:
            lockstep = Lockstep(admin, ctl, clock, jobs, make_pods)
            await lockstep.run()
            await _within(informers[1].wait_for_version(ctl.pods.resource_version))
            recorder.write(out)
    finally:
        for task in recording:
            task.cancel()
        await asyncio.gather(*recording, return_exceptions=True)
        await admin.close()
    return lockstep


BUILTIN = [n for n in policy_names() if policy_class(n).__module__.startswith("policies.")]
JOBS_FOR = {"sia": 60, "gavel": 60, "gavel-agnostic": 60}
"""Shorter traces for the policies that move many jobs each round: every move evicts and
recreates pods live, and 60 jobs still make them preempt and resize dozens (see
`must_preempt`); 80 jobs for the rest."""


def must_preempt(policy: str, passes: list[Pass]) -> None:
    """What the trace must make a preempting policy do, for its test to prove much."""
    kinds = {kind for _, decisions in passes for kind, _, _ in decisions}
    if policy == "las":
        assert len(stops(passes)) >= 5, "LAS should preempt jobs on demotions"
    if policy in ("sia", "gavel", "gavel-agnostic"):
        assert {"Preempt", "Resize"} <= kinds and len(stops(passes)) >= 20, policy


def test_the_trace_has_every_pod_shape_and_queues() -> None:
    nodes, jobs = mixed_trace()
    tasks = [(j.replicas > 1, j.task.num_gpus, j.task.is_sharing) for j in jobs]
    assert {(True, 1, False), (True, 2, False), (False, 2, False)} <= set(tasks)
    assert {(False, 1, True), (False, 0, False)} <= set(tasks)
    assert len({j.submit_time for j in jobs}) == len(jobs)
    started = placements(simulate(nodes, jobs, "bestfit"))
    assert sum(started[j.id][0][0] > j.submit_time for j in jobs) > len(jobs) // 4


@pytest.mark.parametrize("policy", BUILTIN)
def test_simulator_and_controller_decide_identically(
    kube: ControlPlane, policy: str, tmp_path: Path
) -> None:
    nodes, jobs = mixed_trace(num_jobs=JOBS_FOR.get(policy, 80))
    expected = simulate(nodes, jobs, policy)
    must_preempt(policy, expected)
    live = asyncio.run(replay_through_controller(kube, nodes, jobs, policy, tmp_path))
    difference = first_difference(expected, live.passes)
    assert difference is None, "(time, decided by the simulator only, by the controller only)"
    assert len(live.passes) == len(expected)
    # What the controller carried out is what was decided, job by job: every placement,
    # and every stop as an eviction whose count the job's recreated pods carry.
    assert {j.spec.id: j.placed for j in live.jobs.values()} == placements(expected)
    assert {j.spec.id: j.restarts for j in live.jobs.values() if j.restarts} == stops(expected)
    replicas = {j.id: j.replicas for j in jobs}
    evicted = sum(replicas[j] * n for j, n in stops(expected).items())
    assert live.scheduler.stats.evicted == evicted
    check_recorded_trace(tmp_path, nodes, jobs, live.pods_bound)


def first_difference(
    simulated: list[Pass], live: list[Pass]
) -> tuple[float, list[Decided], list[Decided]] | None:
    """The first pass the hosts disagree on: its time and what only the simulator, and
    only the controller, decided (an empty pass where one host had none)."""
    for want, got in zip(simulated, live, strict=False):
        if want != got:
            only_sim = sorted(set(want[1]) - set(got[1]))
            only_live = sorted(set(got[1]) - set(want[1]))
            return (want[0] if want[0] <= got[0] else got[0]), only_sim, only_live
    return None


def check_recorded_trace(
    out: Path,
    nodes: list[NodeSpec],
    jobs: list[JobSpec],
    pods_bound: dict[str, tuple[str, tuple[int, ...]]],
) -> None:
    """What `controller record` wrote is the trace's cluster and jobs, in arrival order,
    with every pod the controller bound, and the simulator replays it to the end."""
    recorded_nodes = read_nodes(out / "nodes.csv")
    assert [(n.name, n.gpus, n.gpu_model) for n in recorded_nodes] == sorted(
        (n.name, n.gpus, n.gpu_model) for n in nodes
    )
    recorded = list(read_jobs(out / "jobs.csv"))
    by_id = {j.id.split("/", 1)[1]: j for j in jobs}
    assert sorted(j.id for j in recorded) == sorted(by_id)
    shape = [(j.task, j.replicas, j.allowed_models) for j in recorded]
    assert shape == [
        (by_id[j.id].task, by_id[j.id].replicas, by_id[j.id].allowed_models) for j in recorded
    ]
    arrival = [j.id for j in sorted(recorded, key=lambda j: j.submit_time)]
    assert arrival == [j.id.split("/", 1)[1] for j in sorted(jobs, key=lambda j: j.submit_time)]
    with (out / "placements.csv").open() as handle:
        rows = {r["pod"]: (r["node"], r["gpus"]) for r in csv.DictReader(handle)}
    assert rows == {
        name: (node, ",".join(map(str, gpus))) for name, (node, gpus) in pods_bound.items()
    }
    replay = Simulation(recorded_nodes, recorded, make_policy("bestfit")).run()
    status = JOB_COLUMNS.index("status")
    assert [row[status] for row in replay.jobs] == ["completed"] * len(jobs)
