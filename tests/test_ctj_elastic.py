"""Elastic CTJ windows: `thief` grows a window job to more than one GPU when GPUs are
free and shrinks it when another stream gains more, in the simulator and through the
controller's scheduler (pods added to the window's pod group, pods withdrawn).

Hand-worked, one node of 4 A100s; ceiling 0.9, floor 0.3, no decay, h = 20 reference
GPU-seconds, one config of 80 (f = 80/100 = 4/5); speed-up 1, 1.8, 3.24 on 1, 2, 4 GPUs
(0.9 per doubling); window 120 s, deadline 100 s, restart cost 10 s. `wide` (at 0.8,
gain 0.08) opens at 0 alone and takes all 4 GPUs; `gainer` (at 0.3, gain 0.48) opens at
10, when `wide` has done 10 · 3.24 = 32.4 of its 80: `thief` moves `wide` to 2 GPUs
(after its restart, 47.6 / 1.8 s more) and gives `gainer` the other 2 (80 / 1.8 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.ctj.crd import ctj_from_json
from controller.ctj.plan import ctj_pod_from_json, plan
from controller.kube.objects import (
    ASSIGNED_GPUS,
    ASSIGNED_MILLI,
    BOUND_AT,
    POD_GROUP_LABEL,
    RESTARTS,
    PodRecord,
    pod_from_json,
)
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.growth import added_names
from controller.scheduling.scheduler import Scheduler, SchedulerOptions
from controller.scheduling.workload import build_workload
from policies import NodeSpec, TaskRequest, make_policy
from policies.continual import AccuracyCurve, RetrainConfig, StreamSpec
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.conftest import accuracy_json, ctj_metadata
from tests.test_controller_scheduler import FakeEffects, node_json

CREATED = 1_700_000_040.0
CURVE = AccuracyCurve(ceiling=0.9, floor=0.3, decay_per_h=0.0, half_gain_gpu_s=20.0)
CONFIG = RetrainConfig("only", 80.0)
INITIAL = {"wide": 0.8, "gainer": 0.3}
OPENS = {"wide": 0.0, "gainer": 10.0}
ROUND_S = 2.0


def ctj_json(name: str) -> dict[str, Any]:
    return {
        "metadata": ctj_metadata(name, now_rfc3339(CREATED)),
        "spec": {
            "image": "retrain:1",
            "replicas": {"min": 1, "max": 4},
            "retrain": {
                "startTime": now_rfc3339(CREATED + OPENS[name]),
                "windowSeconds": 120,
                "deadlineSeconds": 100,
                "windows": 1,
                "configs": [{"name": CONFIG.name, "workGpuSeconds": CONFIG.work_gpu_s}],
            },
            "resources": {
                "gpu": {"count": 1},
                "cpu": "1",
                "memory": "1Gi",
                "gpuTypes": [{"model": "A100", "relativeThroughput": 1.0}],
            },
            "accuracy": accuracy_json(CURVE, INITIAL[name]),
        },
    }


def streams() -> list[StreamSpec]:
    return [
        StreamSpec(
            id=name,
            start_s=OPENS[name],
            window_s=120.0,
            windows=1,
            deadline_s=100.0,
            task=TaskRequest(1000, 1024, 1, 1000),
            throughput={"A100": 1.0},
            allowed_models=frozenset({"A100"}),
            curve=CURVE,
            configs=(CONFIG,),
            initial_accuracy=initial,
            max_gpus=4,
        )
        for name, initial in INITIAL.items()
    ]


def test_thief_grows_a_lone_window_and_shrinks_it_for_a_bigger_gain_in_the_simulator() -> None:
    thief = make_policy("thief", {"realloc_s": ROUND_S})
    run = ContinualRun([NodeSpec("a", 32_000, 131_072, 4, "A100")], streams(), thief)
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    rows = {r[col["stream_id"]]: r for r in run.rows}
    wide, gainer = rows["wide"], rows["gainer"]
    wide_end = 10 + 10 + (80 - 10 * 3.24) / 1.8  # 4 GPUs to 10 s, a restart, then 2 GPUs
    assert wide[col["end_s"]] == pytest.approx(wide_end)
    assert wide[col["gpu_s"]] == pytest.approx(4 * 10 + 2 * (wide_end - 10))
    assert wide[col["restarts"]] == 1
    assert gainer[col["end_s"]] == pytest.approx(10 + 80 / 1.8)
    assert gainer[col["gpu_s"]] == pytest.approx(80 / 1.8 * 2)
    assert (wide[col["status"]], gainer[col["status"]]) == ("completed", "completed")
    assert (wide[col["replicas"]], gainer[col["replicas"]]) == (4, 2)  # the most at once


def window_pod(name: str, pod: str = "", uid: str = "") -> dict[str, Any]:
    """The CTJ's first window pod as the API serves it (renamed: a pod added to it)."""
    result = plan(ctj_from_json(ctj_json(name)), [], CREATED + OPENS[name] + 1, "gpufleet")
    (manifest,) = result.create
    meta = dict(manifest["metadata"])
    created = now_rfc3339(CREATED + OPENS[name] + 1)  # the reconciler makes it at the opening
    meta.update(uid=uid or pod or meta["name"], creationTimestamp=created)
    if pod:
        meta["name"] = pod
    return {**manifest, "metadata": meta, "status": {"phase": "Pending"}}


def bound(pod: dict[str, Any], notes: dict[str, str]) -> dict[str, Any]:
    meta = {**pod["metadata"], "annotations": {**pod["metadata"]["annotations"], **notes}}
    spec = {**pod["spec"], "nodeName": "a"}
    return {**pod, "metadata": meta, "spec": spec, "status": {"phase": "Running"}}


class GrowingEffects(FakeEffects):
    def __init__(self, cache: ClusterCache) -> None:
        super().__init__(cache)
        self.added: list[tuple[str, list[str]]] = []

    async def add_pods(self, pod: PodRecord, names: list[str]) -> int:
        self.added.append((pod.name, list(names)))
        return len(names)


def test_a_window_pod_is_an_elastic_job_up_to_replicas_max() -> None:
    pod = pod_from_json(window_pod("wide"))
    grown = [pod, *(pod_from_json(window_pod("wide", n)) for n in added_names([pod], 3))]
    (job,) = build_workload(grown, {}, WholeGpu()).pending
    simulated = streams()[0].window_job(0, 0, 0.8)
    assert (job.spec.replicas, job.spec.elastic) == (3, simulated.elastic)
    assert [p.name for p in grown] == ["wide-w0-0", "wide-w0-1", "wide-w0-2"]


def test_a_window_without_a_gang_is_a_group_of_one_that_grows_like_a_gang() -> None:
    """`gang: false` places replicas one by one; a window of one replica is its own
    group either way, so the allocators may still grow it to `replicas.max`."""
    body = ctj_json("wide")
    body["spec"]["gang"] = False
    result = plan(ctj_from_json(body), [], CREATED + 1, "gpufleet")
    (manifest,) = result.create
    assert manifest["metadata"]["labels"][POD_GROUP_LABEL] == "wide-w0"
    meta = {**manifest["metadata"], "uid": "u0", "creationTimestamp": now_rfc3339(CREATED + 1)}
    pod = pod_from_json({**manifest, "metadata": meta, "status": {"phase": "Pending"}})
    (job,) = build_workload([pod], {}, WholeGpu()).pending
    assert job.spec.elastic == streams()[0].window_job(0, 0, 0.8).elastic
    assert job.spec.elastic is not None and job.spec.elastic.max_replicas == 4


def test_thief_grows_a_window_by_adding_pods_and_shrinks_it_by_withdrawing_them() -> None:
    async def main() -> None:
        clock = [CREATED + 1]
        cache = ClusterCache(WholeGpu())
        cache.replace(NODES, [node_json("a", 4)])
        effects = GrowingEffects(cache)
        policy = make_policy("thief", {"realloc_s": ROUND_S})
        options = SchedulerOptions(external_rounds=True)
        scheduler = Scheduler(policy, cache, effects, options, clock=lambda: clock[0])  # type: ignore[arg-type]
        loop = asyncio.create_task(scheduler.run())
        try:
            # Alone, `wide` is given all 4 GPUs: 3 pods are added, then the 4 bound.
            cache.apply(PODS, "ADDED", window_pod("wide"))
            scheduler.request_round()
            await scheduler.wait_idle()
            assert effects.added == [("wide-w0-0", ["wide-w0-1", "wide-w0-2", "wide-w0-3"])]
            assert not effects.binds  # the gang waits for the pods added to it
            wide = [window_pod("wide")] + [window_pod("wide", n) for n in effects.added[0][1]]
            for pod in wide[1:]:
                cache.apply(PODS, "ADDED", pod)
            await scheduler.wait_idle()
            binds = {name: notes for name, _, notes in effects.binds}
            assert sorted(binds) == [p["metadata"]["name"] for p in wide]
            assert sorted(notes[ASSIGNED_GPUS] for notes in binds.values()) == ["0", "1", "2", "3"]
            running = [bound(p, binds[p["metadata"]["name"]]) for p in wide]
            for pod in running:
                cache.apply(PODS, "MODIFIED", pod)
            # `gainer` opens at 10 s: thief moves `wide` to 2 GPUs, `gainer` gets 2.
            clock[0] = CREATED + OPENS["gainer"] + 1
            effects.binds.clear()
            cache.apply(PODS, "ADDED", window_pod("gainer"))
            scheduler.request_round()
            await scheduler.wait_idle()
            assert sorted(e[0] for e in effects.evicted) == [p["metadata"]["name"] for p in wide]
            assert ("gainer-w0-0", ["gainer-w0-1"]) in effects.added
            for pod in running:  # withdrawn; the CTJ recreates its replicas.min pod
                cache.apply(PODS, "DELETED", pod)
            cache.apply(PODS, "ADDED", window_pod("wide", "wide-w0-0", uid="wide-again"))
            cache.apply(PODS, "ADDED", window_pod("gainer", "gainer-w0-1"))
            await scheduler.wait_idle()
            assert effects.added[-1] == ("wide-w0-0", ["wide-w0-1"])
            cache.apply(PODS, "ADDED", window_pod("wide", "wide-w0-1", uid="wide-again-1"))
            await scheduler.wait_idle()
            binds = {name: notes for name, _, notes in effects.binds}
            assert sorted(binds) == ["gainer-w0-0", "gainer-w0-1", "wide-w0-0", "wide-w0-1"]
            assert sorted(notes[ASSIGNED_GPUS] for notes in binds.values()) == ["0", "1", "2", "3"]
            assert all(notes[ASSIGNED_MILLI] == "1000" for notes in binds.values())
            # The move is a restart, as in the simulator: `wide` carries it and its service.
            assert [binds[n][RESTARTS] for n in ("wide-w0-0", "wide-w0-1")] == ["1", "1"]
            assert RESTARTS not in binds["gainer-w0-0"] and BOUND_AT in binds["gainer-w0-0"]
        finally:
            loop.cancel()

    asyncio.run(main())


def test_a_replica_recreated_beside_an_added_pod_keeps_the_windows_facts() -> None:
    """After a shrink, replica 0 may be recreated while an added pod is still going: it
    must stay the window's retraining job (else the scheduler's plan for it is dropped)."""
    added = ctj_pod_from_json(window_pod("wide", "wide-w0-1"))
    assert added is not None
    ctj = ctj_from_json(ctj_json("wide"))
    (again,) = plan(ctj, [added], CREATED + 12, "gpufleet").create
    first = window_pod("wide")
    assert again["metadata"]["name"] == "wide-w0-0"
    assert again["metadata"]["annotations"] == first["metadata"]["annotations"]
