"""Inference shares live: the controller as deployed with `--policy=edf` reserves a CTJ's
serving share (`spec.inference.milliGpu: 1000`) on one GPU of a 2-A100 KWOK node when its
window opens, so the window's retraining gets the other GPU alone (it would grow to both
without the share, tests/kube/test_ctj_elastic.py) and an ordinary one-GPU pod waits;
deleting the CTJ frees the share and the pod is bound. The simulator's ContinualRun
retrains the same stream on one GPU too (tests/test_ctj_inference.py hand-works it at a
smaller scale).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import NAME_LABEL, object_path
from controller.devcluster.fleet import NAMESPACE, Admin, pod_manifest
from policies import NodeSpec, TaskRequest, make_policy
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    run,
    serving,
)
from tests.kube.helpers import eventually
from tests.kube.test_ctj_elastic import (
    CONFIG,
    CURVE,
    DEADLINE_S,
    WINDOW_S,
    bound_gpus,
    elastic_ctj,
)
from tests.test_ctj_inference import served_stream

pytestmark = pytest.mark.kube

NODE = NodeSpec("a100-0", 32_000, 131_072, 2, "A100")
ROUND_S = 2.0


def served_ctj(start: float) -> dict[str, Any]:
    manifest = elastic_ctj("wide", start)
    manifest["spec"]["replicas"]["max"] = 2
    manifest["spec"]["inference"] = {"milliGpu": 1000}
    return manifest


def node_of(pods: list[dict[str, Any]], name: str) -> str:
    return next((p["spec"].get("nodeName", "") for p in pods if p["metadata"]["name"] == name), "")


def test_the_serving_share_is_reserved_and_freed_with_its_ctj(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    for milli, gpus in ((0, 2), (1000, 1)):
        stream = replace(
            served_stream(milli),
            window_s=WINDOW_S,
            deadline_s=DEADLINE_S,
            curve=CURVE,
            configs=(CONFIG,),
        )
        sim = ContinualRun([NODE], [stream], make_policy("edf"))
        sim.run()
        (row,) = sim.rows
        speedup = {1: 1.0, 2: 1.8}[gpus]
        assert row[STREAM_COLUMNS.index("gpu_s")] == pytest.approx(gpus * 200 / speedup)

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NODE])
        async with serving(
            ctj_env, tmp_path / "serve.log", "edf", (f"--round-seconds={ROUND_S}",)
        ) as serve:
            await create_ctj(admin.api, served_ctj(math.ceil(time.time()) + 2.0))

            async def retraining() -> bool:
                return bound_gpus(await admin.pods(), "wide") >= 1

            await eventually(retraining, timeout_s=60, what="the window placed")
            task = TaskRequest(1000, 1024, 1, 1000)
            await admin.create_pod(pod_manifest("batch", task, runtime="200s"))
            await asyncio.sleep(3 * ROUND_S)  # rounds in which nothing may change
            pods = await admin.pods()
            assert bound_gpus(pods, "wide") == 1
            assert not node_of(pods, "batch")
            wide = [p for p in pods if p["metadata"]["labels"].get(NAME_LABEL) == "wide"]
            assert {p["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] for p in wide} == {
                "1"
            }

            await admin.api.request("DELETE", object_path(NAMESPACE, "wide"))

            async def batch_bound() -> bool:
                return bool(node_of(await admin.pods(), "batch"))

            await eventually(batch_bound, timeout_s=60, what="the freed share used")
            assert serve.stop() == 0

    run(ctj_env, scenario)
