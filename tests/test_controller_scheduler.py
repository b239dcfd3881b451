"""The scheduling loop against an in-memory stand-in for the API effects: what it binds,
what it does when a bind fails, gangs all-or-nothing, reports, evictions and plans."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from controller.kube.objects import (
    ASSIGNED_GPUS,
    ASSIGNED_MILLI,
    ATTAINED_GPU_S,
    BOUND_AT,
    GANG_SIZE,
    JOB_ID,
    JOB_LABEL,
    PREEMPTIBLE,
    PodRecord,
)
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import BindOutcome
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.scheduler import Scheduler, SchedulerOptions
from policies import (
    Context,
    Place,
    Placement,
    Policy,
    PolicyConfig,
    Resize,
    SchedulingResult,
    Snapshot,
    TaskPlacement,
    make_policy,
)


class FakeEffects:
    """Records calls; binds answer from `outcomes` (default: bound)."""

    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache
        self.binds: list[tuple[str, str, dict[str, str]]] = []
        self.reports: list[tuple[str, str]] = []
        self.evicted: list[tuple[str, str, float]] = []
        self.outcomes: dict[str, BindOutcome] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []

    async def event(self, pod: PodRecord, reason: str, note: str, kind: str, now: float) -> None:
        self.events.append((pod.name, reason, note))

    async def bind(self, pod: PodRecord, node: str, annotations: dict[str, str]) -> BindOutcome:
        self.binds.append((pod.name, node, annotations))
        return self.outcomes.get(pod.name, BindOutcome.BOUND)

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(name)

    async def mark_unschedulable(self, pod: PodRecord, message: str, now: float) -> None:
        self.reports.append((pod.name, message))

    async def evict_and_recreate(
        self,
        pod: PodRecord,
        job_id: str,
        attained: float,
        submit: float,
        by_model: Mapping[str, float],
    ) -> str:
        self.evicted.append((pod.name, job_id, attained, dict(by_model)))
        return f"{pod.name}-r1"


def node_json(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "A100"}},
        "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": str(gpus)}},
    }


def pod_json(
    name: str,
    gpus: int = 1,
    node: str = "",
    labels: dict[str, str] | None = None,
    notes: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": "gpufleet",
        "containers": [
            {
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {"nvidia.com/gpu": str(gpus)},
                }
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "uid": f"u-{name}",
            "name": name,
            "namespace": "ns",
            "labels": labels or {},
            "annotations": notes or {},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


Scenario = Callable[[Scheduler, ClusterCache, FakeEffects], Awaitable[None]]


def run(
    scenario: Scenario, policy: str | Policy = "bestfit", nodes: dict[str, int] | None = None
) -> None:
    async def main() -> None:
        cache = ClusterCache(WholeGpu())
        cache.replace(NODES, [node_json(n, g) for n, g in (nodes or {"a": 2, "b": 4}).items()])
        effects = FakeEffects(cache)
        chosen = make_policy(policy) if isinstance(policy, str) else policy
        scheduler = Scheduler(chosen, cache, effects, SchedulerOptions(), clock=lambda: 1000.0)  # type: ignore[arg-type]
        loop = asyncio.create_task(scheduler.run())
        try:
            await scenario(scheduler, cache, effects)
        finally:
            loop.cancel()

    asyncio.run(main())


def one_round(
    cache: ClusterCache, pods: list[dict[str, Any]], policy: Policy, now: float
) -> FakeEffects:
    """`pods` added to `cache` and one round of `policy` at `now` (rounds on request
    only): what it bound and reported."""

    async def main() -> FakeEffects:
        effects = FakeEffects(cache)
        options = SchedulerOptions(external_rounds=True)
        scheduler = Scheduler(policy, cache, effects, options, clock=lambda: now)  # type: ignore[arg-type]
        loop = asyncio.create_task(scheduler.run())
        try:
            for pod in pods:
                cache.apply(PODS, "ADDED", pod)
            scheduler.request_round()
            await scheduler.wait_idle()
        finally:
            loop.cancel()
        return effects

    return asyncio.run(main())


def test_binds_best_fit_node_with_gpu_annotations() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        cache.apply(PODS, "ADDED", pod_json("p", gpus=2))
        await scheduler.wait_idle()
        ((name, node, notes),) = effects.binds
        assert (name, node, notes[ASSIGNED_GPUS], notes[BOUND_AT]) == ("p", "a", "0,1", "1000.000")
        assert scheduler.stats.bound == 1 and cache.assumed  # held until the watch echoes it
        assert effects.events == [("p", "Scheduled", "Successfully assigned ns/p to a (GPUs 0,1)")]

    run(scenario)


def test_with_external_rounds_the_policy_is_asked_only_when_a_round_is_requested() -> None:
    async def main() -> None:
        cache = ClusterCache(WholeGpu())
        cache.replace(NODES, [node_json("a", 2)])
        effects = FakeEffects(cache)
        options = SchedulerOptions(external_rounds=True)
        scheduler = Scheduler(make_policy("bestfit"), cache, effects, options, clock=lambda: 5.0)  # type: ignore[arg-type]
        loop = asyncio.create_task(scheduler.run())
        try:
            cache.apply(PODS, "ADDED", pod_json("p"))
            await scheduler.wait_idle()
            assert effects.binds == [] and scheduler.stats.passes == 0
            scheduler.request_round()
            await scheduler.wait_idle()
            assert [b[0] for b in effects.binds] == ["p"] and scheduler.stats.passes == 1
        finally:
            loop.cancel()

    asyncio.run(main())


def test_conflict_drops_the_assumption() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        effects.outcomes["p"] = BindOutcome.CONFLICT
        effects.pods["p"] = pod_json("p", node="b")  # someone else bound it to b
        cache.apply(PODS, "ADDED", pod_json("p"))
        await scheduler.wait_idle()
        assert scheduler.stats.conflicts == 1 and not cache.assumed
        state = cache.ledger.state
        assert state is not None
        assert int(state.gpu_free[state.node_index["a"]].sum()) == 2000
        assert int(state.gpu_free[state.node_index["b"]].sum()) == 3000
        assert len(effects.binds) == 1  # not retried: the pod is bound now

    run(scenario)


def test_a_re_read_answered_after_the_watch_saw_the_bind_does_not_undo_it() -> None:
    """An expired assumption is re-read while the same pass binds the pod again; the
    read's answer (pending, as the pod was when asked) arrives after the watch's echo
    of the bind. Applied, it would make the pod pending again and bind it a third time
    (a 409 from a real API server, seen under CI load)."""

    async def main() -> None:
        now = [1000.0]
        cache = ClusterCache(WholeGpu())
        cache.replace(NODES, [node_json("a", 2)])
        effects = FakeEffects(cache)
        answer = asyncio.Event()

        async def late_read(namespace: str, name: str) -> dict[str, Any] | None:
            asked = effects.pods.get(name)
            await answer.wait()
            return asked

        effects.read_pod = late_read  # type: ignore[method-assign]
        options = SchedulerOptions(assume_timeout_s=5.0)
        scheduler = Scheduler(make_policy("fifo"), cache, effects, options, clock=lambda: now[0])  # type: ignore[arg-type]
        loop = asyncio.create_task(scheduler.run())
        try:
            cache.apply(PODS, "ADDED", pod_json("p"))
            await scheduler.wait_idle()
            effects.pods["p"] = pod_json("p")  # the API server's answer when asked: pending
            now[0] += 10.0  # the watch never echoed the first bind: its assumption expires
            scheduler.wake()

            async def rebound() -> None:
                while len(effects.binds) < 2:
                    await asyncio.sleep(0)

            await asyncio.wait_for(rebound(), 10)
            assert scheduler.stats.expired == 1
            cache.apply(PODS, "MODIFIED", pod_json("p", node="a"))  # the echo of bind 2
            answer.set()
            await scheduler.wait_idle()
            assert [b[0] for b in effects.binds] == ["p", "p"]
            assert cache.pods["u-p"].node_name == "a" and not cache.pending_pods()
            state = cache.ledger.state
            assert state is not None and int(state.gpu_free.sum()) == 1000
        finally:
            loop.cancel()

    asyncio.run(main())


def test_gang_member_failing_to_bind_evicts_the_bound_members() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        effects.outcomes["g-1"] = BindOutcome.GONE
        gang = {JOB_LABEL: "g"}
        notes = {GANG_SIZE: "2", ATTAINED_GPU_S: "7.5"}  # it ran before, and keeps that
        for i in range(2):
            cache.apply(PODS, "ADDED", pod_json(f"g-{i}", labels=gang, notes=notes))
        await scheduler.wait_idle()
        assert sorted(b[0] for b in effects.binds) == ["g-0", "g-1"]
        assert effects.evicted == [("g-0", "ns/g", 7.5, {})]

    run(scenario)


def test_unschedulable_is_reported_once_per_reason() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        cache.apply(PODS, "ADDED", pod_json("huge", gpus=8))
        await scheduler.wait_idle()
        cache.apply(PODS, "ADDED", pod_json("small", gpus=1))  # another pass, same reason
        await scheduler.wait_idle()
        cache.apply(NODES, "ADDED", node_json("c", 1))  # another pass, a new reason
        await scheduler.wait_idle()
        assert scheduler.stats.passes == 3
        assert effects.reports == [
            ("huge", "bestfit: 0/2 nodes are available: 2 insufficient GPUs"),
            ("huge", "bestfit: 0/3 nodes are available: 3 insufficient GPUs"),
        ]

    run(scenario)


def test_paused_scheduler_decides_nothing_until_resumed() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        scheduler.pause()
        cache.apply(PODS, "ADDED", pod_json("p"))
        await scheduler.wait_idle()
        assert effects.binds == []
        scheduler.resume()
        await scheduler.wait_idle()
        assert [b[0] for b in effects.binds] == ["p"]

    run(scenario)


def test_preemption_evicts_then_places_once_the_gpus_are_free() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        # A job that has had lots of service holds the only GPU; LAS prefers a new one.
        veteran = pod_json(
            "old",
            node="a",
            notes={
                ASSIGNED_GPUS: "0",
                "gpufleet.io/assigned-milli": "1000",
                BOUND_AT: "0",
                ATTAINED_GPU_S: "50000",
            },
        )
        cache.apply(PODS, "ADDED", veteran)
        cache.apply(PODS, "ADDED", pod_json("new"))
        await scheduler.wait_idle()
        assert [(e[0], e[1]) for e in effects.evicted] == [("old", "ns/old")]
        assert effects.evicted[0][2] == 50000 + 1000.0  # carried service grows while running
        assert effects.evicted[0][3] == {"A100": 1000.0}  # this stint, on its GPU model
        assert effects.binds == []
        cache.apply(PODS, "DELETED", veteran)  # the eviction lands
        await scheduler.wait_idle()
        assert [(b[0], b[1]) for b in effects.binds] == [("new", "a")]

    run(scenario, policy="las", nodes={"a": 1})


def test_a_pod_that_may_not_be_preempted_keeps_its_gpu_under_las() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        notes = {ASSIGNED_GPUS: "0", ASSIGNED_MILLI: "1000", BOUND_AT: "0"}
        veteran = pod_json("old", node="a", notes={**notes, PREEMPTIBLE: "false"})
        cache.apply(PODS, "ADDED", veteran)
        cache.apply(PODS, "ADDED", pod_json("new"))
        await scheduler.wait_idle()
        assert effects.evicted == [] and effects.binds == []

    run(scenario, policy="las", nodes={"a": 1})


class ResizeOnce(Policy):
    """Moves job `ns/r` to GPU 1 of node a on its first pass, then decides nothing."""

    def __init__(self) -> None:
        super().__init__(PolicyConfig())
        self.calls = 0

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        self.calls += 1
        if self.calls > 1:
            return SchedulingResult()
        target = Placement((TaskPlacement("a", (1,), 1000),))
        return SchedulingResult((Resize("ns/r", target, "move to GPU 1"),))


def test_resize_evicts_then_binds_the_recreated_pod_to_the_plan() -> None:
    async def main() -> None:
        cache = ClusterCache(WholeGpu())
        cache.replace(NODES, [node_json("a", 2)])
        effects = FakeEffects(cache)
        options = SchedulerOptions(round_s=3600.0)
        scheduler = Scheduler(ResizeOnce(), cache, effects, options, clock=lambda: 5.0)  # type: ignore[arg-type]
        running = pod_json("r", node="a", notes={ASSIGNED_GPUS: "0", ASSIGNED_MILLI: "1000"})
        cache.apply(PODS, "ADDED", running)
        loop = asyncio.create_task(scheduler.run())
        try:
            await scheduler.wait_idle()
            assert [(e[0], e[1]) for e in effects.evicted] == [("r", "ns/r")]
            cache.apply(PODS, "DELETED", running)
            cache.apply(PODS, "ADDED", pod_json("r-r1", notes={JOB_ID: "ns/r"}))
            await scheduler.wait_idle()
            ((name, node, notes),) = effects.binds
            assert (name, node, notes[ASSIGNED_GPUS]) == ("r-r1", "a", "1")
        finally:
            loop.cancel()

    asyncio.run(main())


class FailsOn(Policy):
    """Best fit, except that it raises whenever job `bad` is in the queue (a stand-in
    for a policy bug that one job's shape triggers). No `name`: not registered."""

    def __init__(self, bad: str) -> None:
        super().__init__(PolicyConfig())
        self.bad = bad
        self.inner = make_policy("bestfit")

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        if any(job.id == self.bad for job in snapshot.pending):
            raise ZeroDivisionError("a bug this job's shape triggers")
        return self.inner.schedule(snapshot, ctx)


FailsOn.name = "fails-on"  # set after the class body, so the registry does not see it


def test_a_policy_that_raises_on_one_job_costs_that_job_alone() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        for name in ("a1", "a2", "bad", "b1", "b2"):
            cache.apply(PODS, "ADDED", pod_json(name))
        await scheduler.wait_idle()
        assert sorted(b[0] for b in effects.binds) == ["a1", "a2", "b1", "b2"]
        ((name, message),) = effects.reports
        assert name == "bad" and message.startswith("invalid policy:")
        assert "ZeroDivisionError" in message
        assert scheduler.stats.policy_errors == 1
        assert scheduler.quarantine.counts == {("Pod", "policy"): 1}

    run(scenario, FailsOn("ns/bad"), nodes={"a": 8})


class OverAsks(Policy):
    """Places job `greedy` on two GPUs although its pod asks for one (breaking the
    placement contract), and everything else by best fit."""

    def __init__(self) -> None:
        super().__init__(PolicyConfig())
        self.inner = make_policy("bestfit")

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        result = self.inner.schedule(snapshot, ctx)
        wrong = Placement((TaskPlacement("a", (0, 1), 1000),))
        decisions = tuple(
            Place(d.job_id, wrong, "too much") if d.job_id == "ns/greedy" else d
            for d in result.decisions
        )
        return SchedulingResult(decisions)


OverAsks.name = "over-asks"


def test_a_decision_that_breaks_the_placement_contract_is_refused_for_its_job() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        cache.apply(PODS, "ADDED", pod_json("greedy"))
        cache.apply(PODS, "ADDED", pod_json("modest"))
        await scheduler.wait_idle()
        assert [b[0] for b in effects.binds] == ["modest"]
        ((name, message),) = effects.reports
        assert name == "greedy" and message.startswith("invalid placement:")
        assert scheduler.quarantine.counts == {("Pod", "placement"): 1}

    run(scenario, OverAsks(), nodes={"a": 4})


def test_a_pending_pod_with_a_bad_annotation_is_reported_once_and_others_bind() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        cache.apply(PODS, "ADDED", pod_json("bad", notes={ATTAINED_GPU_S: "abc"}))
        cache.apply(PODS, "ADDED", pod_json("good"))
        await scheduler.wait_idle()
        cache.apply(NODES, "ADDED", node_json("c", 1))  # another pass: not reported again
        await scheduler.wait_idle()
        assert [b[0] for b in effects.binds] == ["good"]
        field = f"metadata.annotations[{ATTAINED_GPU_S}]"
        assert effects.reports == [("bad", f"invalid {field}: 'abc' is not a number")]
        assert scheduler.quarantine.counts == {("Pod", field): 1}

    run(scenario)


def test_a_bound_pod_with_unreadable_gpus_is_charged_by_its_request_and_flagged() -> None:
    async def scenario(scheduler: Scheduler, cache: ClusterCache, effects: FakeEffects) -> None:
        notes = {ASSIGNED_GPUS: "zero", ASSIGNED_MILLI: "1000"}
        cache.apply(PODS, "ADDED", pod_json("odd", node="a", notes=notes))
        for name in ("p1", "p2"):
            cache.apply(PODS, "ADDED", pod_json(name))
        await scheduler.wait_idle()
        state = cache.ledger.state
        assert state is not None
        assert int(state.gpu_free[state.node_index["a"]].sum()) == 0  # 1 by request + p1
        assert sorted((b[0], b[1]) for b in effects.binds) == [("p1", "a"), ("p2", "b")]
        ((name, reason, note),) = [e for e in effects.events if e[1] != "Scheduled"]
        assert (name, reason) == ("odd", "InvalidObject")
        assert f"[{ASSIGNED_GPUS}]" in note and "counting the pod by its requests" in note

    run(scenario)


class RecordsRounds(Policy):
    """A round policy that notes when it is asked."""

    def __init__(self) -> None:
        super().__init__(PolicyConfig())
        self.round_s = 1.0
        self.asked: list[float] = []

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        self.asked.append(snapshot.now)
        return SchedulingResult()


def test_rounds_fall_on_the_clocks_multiples_of_the_round_length() -> None:
    """As the simulator's rounds fall on multiples from its zero, so a recorded run's
    rounds are at the same instants in both hosts (the start time does not matter)."""

    async def main() -> None:
        cache = ClusterCache(WholeGpu())
        cache.replace(NODES, [node_json("a", 2)])
        policy = RecordsRounds()
        await asyncio.sleep(0.5 - time.time() % 1 if time.time() % 1 < 0.5 else 0)
        scheduler = Scheduler(policy, cache, FakeEffects(cache), SchedulerOptions())  # type: ignore[arg-type]
        loop = asyncio.create_task(scheduler.run())
        try:
            await asyncio.sleep(2.5)
        finally:
            loop.cancel()
        first, *later = policy.asked
        assert first % 1 >= 0.5  # the first round at the start, the rest on the grid
        assert len(later) >= 2 and all(t % 1 == 0 for t in later), later  # as of the tick

    asyncio.run(main())
