"""Elastic CTJ windows live: the controller as deployed with `--policy=thief` grows a
lone window to all 4 A100s of a KWOK node (3 pods added to its pod group) and, when a
stream that gains more opens, withdraws the window's pods and binds it again on fewer
GPUs, giving the others to the newcomer; the simulator's ContinualRun does the same on
the same streams (`wide` restarts once). The hand-worked case at this scale (h = 50,
work 200 reference-GPU-seconds, window 300 s, deadline 250 s) is tests/test_ctj_elastic.py's.

A window of `replicas: {min: 2, max: 4}` never runs on fewer than 2 GPUs: with 1 of the
node's 4 free it waits, with 2 free its 2 pods are bound, and once all 4 are free (and an
arrival makes the round re-plan running windows) it grows to 4, as in
tests/test_ctj_min_replicas.py's hand-worked case.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import NAME_LABEL
from controller.devcluster.fleet import Admin, pod_manifest
from controller.scheduling.effects import now_rfc3339
from policies import NodeSpec, TaskRequest, make_policy
from policies.continual import AccuracyCurve, RetrainConfig
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.conftest import accuracy_json
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    run,
    serving,
)
from tests.kube.helpers import eventually
from tests.test_ctj_elastic import streams as hand_worked_streams

pytestmark = pytest.mark.kube

NODE = NodeSpec("a100-0", 32_000, 131_072, 4, "A100")
CURVE = AccuracyCurve(ceiling=0.9, floor=0.3, decay_per_h=0.0, half_gain_gpu_s=50.0)
CONFIG = RetrainConfig("only", work_gpu_s=200.0)
WINDOW_S, DEADLINE_S = 300, 250
INITIAL = {"wide": 0.8, "gainer": 0.3}
OPENS = {"wide": 0.0, "gainer": 15.0}
ROUND_S = 2.0


def elastic_ctj(name: str, start: float) -> dict[str, Any]:
    manifest = ctj_manifest(
        name,
        window_s=WINDOW_S,
        deadline_s=DEADLINE_S,
        windows=1,
        runtime="200s",  # the pods outlive the test: it watches placements, not outcomes
        replicas=1,
        gpu_models=("A100",),
    )
    spec = manifest["spec"]
    spec["replicas"]["max"] = 4
    spec["resources"]["gpuTypes"] = [{"model": "A100", "relativeThroughput": 1.0}]
    spec["retrain"]["startTime"] = now_rfc3339(start + OPENS[name])
    spec["retrain"]["configs"] = [{"name": CONFIG.name, "workGpuSeconds": CONFIG.work_gpu_s}]
    spec["accuracy"] = accuracy_json(CURVE, INITIAL[name])
    return manifest


def simulated() -> dict[str, tuple[int, float]]:
    """Each stream's restarts and GPU-seconds in the simulator."""
    streams = [
        replace(
            stream,
            start_s=OPENS[stream.id],
            window_s=WINDOW_S,
            deadline_s=DEADLINE_S,
            curve=CURVE,
            configs=(CONFIG,),
        )
        for stream in hand_worked_streams()
    ]
    sim = ContinualRun([NODE], streams, make_policy("thief", {"realloc_s": ROUND_S}))
    sim.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    return {
        str(r[col["stream_id"]]): (int(r[col["restarts"]]), float(r[col["gpu_s"]]))
        for r in sim.rows
    }


def bound_gpus(pods: Iterable[dict[str, Any]], ctj: str) -> int:
    """GPUs held by the CTJ's bound pods that are not being withdrawn (one each)."""
    return sum(
        1
        for p in pods
        if p["metadata"]["labels"].get(NAME_LABEL) == ctj
        and p["spec"].get("nodeName")
        and not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") in ("Pending", "Running")
    )


def bound_restarts(pods: Iterable[dict[str, Any]], ctj: str) -> set[str | None]:
    """The restart counts of the CTJ's bound pods that are not being withdrawn."""
    return {
        p["metadata"]["annotations"].get("gpufleet.io/restarts")
        for p in pods
        if p["metadata"]["labels"].get(NAME_LABEL) == ctj
        and p["spec"].get("nodeName")
        and not p["metadata"].get("deletionTimestamp")
    }


def test_thief_grows_a_window_on_free_gpus_and_shrinks_it_for_a_bigger_gain(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = simulated()
    # `wide` moves once; `gainer` runs on 2 GPUs throughout (200 / 1.8 s each).
    assert (sim["wide"][0], sim["gainer"]) == (1, (0, pytest.approx(2 * 200 / 1.8)))

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NODE])
        async with serving(
            ctj_env, tmp_path / "serve.log", "thief", (f"--round-seconds={ROUND_S}",)
        ) as serve:
            start = math.ceil(time.time()) + 3.0
            for name in INITIAL:
                await create_ctj(admin.api, elastic_ctj(name, start))

            async def wide_on_all_gpus() -> bool:
                return bound_gpus(await admin.pods(), "wide") == NODE.gpus

            await eventually(wide_on_all_gpus, timeout_s=60, what="wide grown to 4 GPUs")
            assert time.time() < start + OPENS["gainer"], "grown only after gainer opened"

            async def shared() -> bool:
                pods = await admin.pods()
                return (bound_gpus(pods, "wide"), bound_gpus(pods, "gainer")) == (2, 2)

            await eventually(shared, timeout_s=90, what="wide shrunk to 2 GPUs, gainer on 2")
            restarts = bound_restarts(await admin.pods(), "wide")
            assert restarts == {"1"}  # the move counted as the simulator counts it
            assert serve.stop() == 0

    run(ctj_env, scenario)


def lower_bounded_ctj(start: float) -> dict[str, Any]:
    manifest = elastic_ctj("wide", start)
    manifest["metadata"]["name"] = "lower"
    manifest["spec"]["replicas"] = {"min": 2, "max": 4}
    manifest["spec"]["accuracy"] = accuracy_json(CURVE, 0.5)
    return manifest


def test_a_window_of_min_2_waits_on_1_free_gpu_starts_on_2_and_grows_to_4(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NODE])
        async with serving(
            ctj_env, tmp_path / "serve.log", "thief", (f"--round-seconds={ROUND_S}",)
        ) as serve:
            held = {"hold-two": 2, "hold-one": 1}  # running until deleted
            for name, gpus in held.items():
                await admin.create_pod(pod_manifest(name, TaskRequest(100, 64, gpus, 1000)))

            async def holders_bound() -> bool:
                pods = {p["metadata"]["name"]: p for p in await admin.pods()}
                return all(pods.get(n, {}).get("spec", {}).get("nodeName") for n in held)

            await eventually(holders_bound, timeout_s=60, what="3 of the 4 GPUs held")
            await create_ctj(admin.api, lower_bounded_ctj(time.time()))

            async def window_pods() -> list[dict[str, Any]]:
                pods = await admin.pods()
                return [p for p in pods if p["metadata"]["labels"].get(NAME_LABEL) == "lower"]

            async def min_pods_created() -> bool:
                return len(await window_pods()) == 2

            await eventually(min_pods_created, timeout_s=60, what="the window's 2 pods")
            await asyncio.sleep(5 * ROUND_S)  # rounds pass with 1 GPU free
            assert bound_gpus(await window_pods(), "lower") == 0
            await admin.delete_pod("hold-one")

            async def on(gpus: int) -> bool:
                return bound_gpus(await admin.pods(), "lower") == gpus

            await eventually(lambda: on(2), timeout_s=60, what="the window on 2 GPUs")
            await admin.delete_pod("hold-two")
            await admin.create_pod(pod_manifest("probe", TaskRequest(100, 64)))  # an arrival
            await eventually(lambda: on(4), timeout_s=90, what="the window grown to 4 GPUs")
            restarts = bound_restarts(await admin.pods(), "lower")
            assert restarts == {"1"}  # the move counted as the simulator counts it
            assert serve.stop() == 0

    run(ctj_env, scenario)
