"""A CTJ window's simulated runtime follows what the policy granted, as the simulator
charges it: the scheduler binds an opted-in window's pods with `gpufleet.io/sim-runtime`
= restart cost (if it ran before) + remaining work / rate of the granted shape.

Hand-worked on tests/test_ctj_elastic.py's case (one node of 4 A100s, work 80 reference
GPU-seconds, speed-up 3.24 on 4 GPUs and 1.8 on 2, restart cost 10 s): `wide` alone gets
4 GPUs, 80 / 3.24 = 24.691 s; 10 s later `gainer` opens and `thief` moves `wide` to 2
GPUs with 32.4 done: 10 + 47.6 / 1.8 = 36.444 s, exactly the simulator's end of `wide`
less the move; `gainer` gets 80 / 1.8 = 44.444 s on the other 2.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.ctj.crd import ctj_from_json
from controller.ctj.plan import plan
from controller.ctj.runtime import SIMULATED_RUNTIME, WORK_DONE, granted_runtime
from controller.kube.objects import ASSIGNED_GPUS, RESTARTS, RUNTIME, pod_from_json
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.scheduler import Scheduler, SchedulerOptions
from controller.scheduling.workload import build_workload
from policies import AllocationShape, NodeSpec, make_policy
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.test_controller_scheduler import node_json
from tests.test_ctj_elastic import (
    CREATED,
    OPENS,
    ROUND_S,
    GrowingEffects,
    bound,
    ctj_json,
    streams,
)


def opted_in_pod(ctj: str, name: str = "", uid: str = "", opt_in: str = "true") -> dict[str, Any]:
    """The CTJ's window pod as the API serves it, the CTJ asking for simulated runtime
    through `podMetadata` (renamed: a pod added to the window)."""
    body = ctj_json(ctj)
    body["spec"]["podMetadata"] = {"annotations": {SIMULATED_RUNTIME: opt_in}}
    (manifest,) = plan(ctj_from_json(body), [], CREATED + OPENS[ctj] + 1, "gpufleet").create
    meta = dict(manifest["metadata"])
    meta.update(
        uid=uid or name or meta["name"], creationTimestamp=now_rfc3339(CREATED + OPENS[ctj] + 1)
    )
    if name:
        meta["name"] = name
    return {**manifest, "metadata": meta, "status": {"phase": "Pending"}}


def thief_on_one_node(
    gpus: int, clock: list[float]
) -> tuple[Scheduler, ClusterCache, GrowingEffects]:
    """The scheduler running `thief` on A100 node `a`, deciding when asked, at `clock[0]`."""
    cache = ClusterCache(WholeGpu())
    cache.replace(NODES, [node_json("a", gpus)])
    effects = GrowingEffects(cache)
    thief = make_policy("thief", {"realloc_s": ROUND_S})
    rounds = SchedulerOptions(external_rounds=True)
    return Scheduler(thief, cache, effects, rounds, clock=lambda: clock[0]), cache, effects  # type: ignore[arg-type]


async def gainer_opens(scheduler: Scheduler, effects: GrowingEffects, clock: list[float]) -> None:
    """`gainer`'s window opens (its pod is created a second later) and a round decides."""
    clock[0] = CREATED + OPENS["gainer"] + 1
    effects.binds.clear()
    scheduler.cache.apply(PODS, "ADDED", opted_in_pod("gainer"))
    scheduler.request_round()
    await scheduler.wait_idle()


def seconds(runtime: str) -> float:
    assert runtime.endswith("s")
    return float(runtime[:-1])


def simulated_ends() -> dict[str, float]:
    thief = make_policy("thief", {"realloc_s": ROUND_S})
    run = ContinualRun([NodeSpec("a", 32_000, 131_072, 4, "A100")], streams(), thief)
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    return {str(r[col["stream_id"]]): float(r[col["end_s"]]) for r in run.rows}  # type: ignore[arg-type]


def test_a_moved_window_runs_its_remaining_work_at_its_new_rate_after_a_restart() -> None:
    ends = simulated_ends()
    move = OPENS["gainer"]  # thief moves `wide` when `gainer` opens

    async def main() -> None:
        clock = [CREATED + 1]
        scheduler, cache, effects = thief_on_one_node(4, clock)
        loop = asyncio.create_task(scheduler.run())

        pods: dict[str, dict[str, Any]] = {}

        def add(pod: dict[str, Any]) -> None:
            pods[pod["metadata"]["name"]] = pod
            cache.apply(PODS, "ADDED", pod)

        async def settle() -> dict[str, dict[str, str]]:
            """The pods the scheduler added to windows are created; what was bound."""
            await scheduler.wait_idle()
            for _first, names in effects.added:
                for name in names:
                    add(opted_in_pod(name.split("-w")[0], name, uid=f"{name}@{clock[0]}"))
            effects.added.clear()
            await scheduler.wait_idle()
            return {name: notes for name, _, notes in effects.binds}

        try:
            add(opted_in_pod("wide"))
            scheduler.request_round()
            binds = await settle()
            assert len(binds) == 4
            assert [seconds(n[RUNTIME]) for n in binds.values()] == [
                pytest.approx(80 / 3.24, abs=1e-3)
            ] * 4
            assert {n[WORK_DONE] for n in binds.values()} == {"0.0"}
            running = [bound(pods[name], notes) for name, notes in binds.items()]
            for pod in running:
                cache.apply(PODS, "MODIFIED", pod)

            await gainer_opens(scheduler, effects, clock)  # `wide` has run 10 s on 4 GPUs
            for pod in running:  # withdrawn; the CTJ recreates its replicas.min pod
                cache.apply(PODS, "DELETED", pod)
            add(opted_in_pod("wide", uid="wide-again"))
            binds = await settle()
            binds = await settle()  # the regrown pod joins, then the gang binds
            assert sorted(binds) == ["gainer-w0-0", "gainer-w0-1", "wide-w0-0", "wide-w0-1"]
            wide = [binds[n] for n in ("wide-w0-0", "wide-w0-1")]
            assert [n[RESTARTS] for n in wide] == ["1", "1"]
            assert [float(n[WORK_DONE]) for n in wide] == [pytest.approx(10 * 3.24)] * 2
            assert [seconds(n[RUNTIME]) for n in wide] == [
                pytest.approx(10 + 47.6 / 1.8, abs=1e-3)
            ] * 2
            # The simulator's ends, from the bind at the move (runtimes are to 1 ms).
            assert seconds(wide[0][RUNTIME]) == pytest.approx(ends["wide"] - move, abs=1e-3)
            gainer = seconds(binds["gainer-w0-0"][RUNTIME])
            assert gainer == pytest.approx(ends["gainer"] - OPENS["gainer"], abs=1e-3)
        finally:
            loop.cancel()

    asyncio.run(main())


def test_a_share_of_one_gpu_runs_at_that_share_of_its_models_speed() -> None:
    (job,) = build_workload([pod_from_json(opted_in_pod("wide"))], {}, WholeGpu()).pending
    quarter = AllocationShape("A100", 1, 1, gpu_milli=250)
    assert granted_runtime(job.spec, quarter, {}, 0) == {RUNTIME: "320.000s", WORK_DONE: "0.0"}
    moved = {RESTARTS: "2", WORK_DONE: "60.0"}  # 20 left at a quarter, after the restart
    assert granted_runtime(job.spec, quarter, moved, 0)[RUNTIME] == "90.000s"


def test_a_window_that_does_not_opt_in_keeps_its_stated_runtime() -> None:
    (job,) = build_workload(
        [pod_from_json(opted_in_pod("wide", opt_in="false"))], {}, WholeGpu()
    ).pending
    assert granted_runtime(job.spec, AllocationShape("A100", 4, 1), {}, 0) == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [(SIMULATED_RUNTIME, "yes"), (WORK_DONE, "-3"), (WORK_DONE, "nan")],
)
def test_an_unreadable_runtime_annotation_sets_the_pod_aside_naming_it(
    key: str, value: str
) -> None:
    manifest = opted_in_pod("wide")
    manifest["metadata"]["annotations"][key] = value
    workload = build_workload([pod_from_json(manifest)], {}, WholeGpu())
    assert not workload.pending
    (rejected,) = workload.rejected
    assert key in rejected.problem.message and repr(value) in rejected.problem.message


def test_a_withdrawn_window_waits_as_the_simulators_preempted_job() -> None:
    """On one A100, `wide` runs alone for 10 s; `thief` then gives the GPU to `gainer`
    and `wide` waits, as in the simulator (where it expires after 10 GPU-seconds and one
    restart). Its recreated pod is no new arrival to the policy: it started before, with
    restarts 1 and 10 of its 80 done (else thief re-plans every running share again)."""
    thief = make_policy("thief", {"realloc_s": ROUND_S})
    sim = ContinualRun([NodeSpec("a", 32_000, 131_072, 1, "A100")], streams(), thief)
    sim.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    rows = {r[col["stream_id"]]: r for r in sim.rows}
    assert [rows["wide"][col[k]] for k in ("status", "restarts", "gpu_s")] == ["expired", 1, 10]

    async def main() -> None:
        clock = [CREATED + 1]
        scheduler, cache, effects = thief_on_one_node(1, clock)
        seen: list[Any] = []
        scheduler.on_decided = lambda snapshot, _result: seen.append(snapshot)
        loop = asyncio.create_task(scheduler.run())
        try:
            wide = opted_in_pod("wide")
            cache.apply(PODS, "ADDED", wide)
            scheduler.request_round()
            await scheduler.wait_idle()
            ((pod_name, _, notes),) = effects.binds
            assert pod_name == "wide-w0-0"
            running = bound(wide, notes)
            cache.apply(PODS, "MODIFIED", running)

            await gainer_opens(scheduler, effects, clock)
            assert [e[0] for e in effects.evicted] == ["wide-w0-0"]
            cache.apply(PODS, "DELETED", running)  # the GPU is free: `gainer` is bound
            await scheduler.wait_idle()
            assert [b[0] for b in effects.binds] == ["gainer-w0-0"] and not effects.reports
            assert seconds(effects.binds[0][2][RUNTIME]) == pytest.approx(80.0)
            cache.apply(PODS, "ADDED", opted_in_pod("wide", uid="wide-again"))
            clock[0] += ROUND_S
            scheduler.request_round()
            await scheduler.wait_idle()
            (waiting,) = seen[-1].pending
            assert waiting.id == "ns/wide-w0" and waiting.started_at is not None
            assert (waiting.restarts, waiting.done) == (1, pytest.approx(10.0))
            assert waiting.attained_gpu_s == pytest.approx(10.0)
        finally:
            loop.cancel()

    asyncio.run(main())


def test_gpus_planned_for_a_growing_window_are_not_given_to_the_next_opening() -> None:
    """`wide` is planned on all 4 A100s and its 3 added pods are on their way when
    `gainer` opens: the round must not hand those GPUs to `gainer` (in the simulator
    `wide` holds them from the instant it was grown), else `wide`'s plan waits for
    `gainer` to finish. Once its pods are there, `wide` is bound to all 4."""

    async def main() -> None:
        clock = [CREATED + 1]
        scheduler, cache, effects = thief_on_one_node(4, clock)
        loop = asyncio.create_task(scheduler.run())
        try:
            cache.apply(PODS, "ADDED", opted_in_pod("wide"))
            scheduler.request_round()
            await scheduler.wait_idle()
            ((_first, names),) = effects.added
            effects.added.clear()
            await gainer_opens(scheduler, effects, clock)
            assert (effects.binds, effects.added) == ([], [])  # nothing free for `gainer`
            for name in names:
                cache.apply(PODS, "ADDED", opted_in_pod("wide", name, uid=name))
            await scheduler.wait_idle()
            assert sorted((b[0], b[2][ASSIGNED_GPUS]) for b in effects.binds) == [
                (f"wide-w0-{i}", str(i)) for i in range(4)
            ]
        finally:
            loop.cancel()

    asyncio.run(main())
