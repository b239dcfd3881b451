"""Elastic CTJ windows live: the controller as deployed with `--policy=thief` grows a
lone window to all 4 A100s of a KWOK node (3 pods added to its pod group) and, when a
stream that gains more opens, withdraws the window's pods and binds it again on fewer
GPUs, giving the others to the newcomer; the simulator's ContinualRun does the same on
the same streams (`wide` restarts once). The hand-worked case at this scale (h = 50,
work 200 reference-GPU-seconds, window 300 s, deadline 250 s) is tests/test_ctj_elastic.py's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import NAME_LABEL
from controller.devcluster.fleet import Admin
from controller.scheduling.effects import now_rfc3339
from policies import NodeSpec, make_policy
from policies.continual import AccuracyCurve, RetrainConfig
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.conftest import accuracy_json
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
)
from tests.kube.helpers import eventually
from tests.kube.test_ctj_lifecycle import ServeProcess, run
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


def test_thief_grows_a_window_on_free_gpus_and_shrinks_it_for_a_bigger_gain(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = simulated()
    # `wide` moves once; `gainer` runs on 2 GPUs throughout (200 / 1.8 s each).
    assert (sim["wide"][0], sim["gainer"]) == (1, (0, pytest.approx(2 * 200 / 1.8)))

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NODE])
        serve = ServeProcess(
            ctj_env, tmp_path / "serve.log", "thief", (f"--round-seconds={ROUND_S}",)
        )
        try:
            await serve.until_ready()
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
            pods = await admin.pods()
            wide = [p for p in pods if p["metadata"]["labels"].get(NAME_LABEL) == "wide"]
            restarts = {
                p["metadata"]["annotations"].get("gpufleet.io/restarts")
                for p in wide
                if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
            }
            assert restarts == {"1"}  # the move counted as the simulator counts it
            assert serve.stop() == 0
        finally:
            serve.stop()

    run(ctj_env, scenario)
