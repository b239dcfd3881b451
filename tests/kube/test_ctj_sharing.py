"""Half-GPU CTJ windows live, as tests/test_gpu_sharing.py works them by hand: with a
device backend that shares GPUs (`--backend=hami`) two windows of half an A100 are bound
on halves of one GPU and both run (the kubelet admits both: HAMi counts vGPU slots);
with the whole-GPU device plugin (`--backend=whole`) the policy is told the GPU cannot
be shared, so `thief` gives one window the whole GPU and the other waits for it, rather
than binding a second pod the kubelet would refuse.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import NAME_LABEL
from controller.devcluster.fleet import Admin
from controller.kube.objects import ASSIGNED_GPUS, ASSIGNED_MILLI
from controller.scheduling.effects import now_rfc3339
from policies import NodeSpec
from tests.conftest import accuracy_json
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    ServeProcess,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    run,
    serving,
)
from tests.kube.helpers import eventually
from tests.kube.test_kube_agreement import hami_node
from tests.test_gpu_sharing import CONFIG, CURVE, ROUND_S

pytestmark = pytest.mark.kube

NODE = NodeSpec("a100-0", 32_000, 131_072, 1, "A100")


def half_gpu_ctj(name: str, start: float, runtime: str) -> dict[str, Any]:
    manifest = ctj_manifest(
        name, window_s=300, deadline_s=250, windows=1, runtime=runtime, replicas=1
    )
    spec = manifest["spec"]
    spec["replicas"]["max"] = 1
    spec["resources"]["gpu"] = {"count": 1, "milli": 500, "memoryMiB": 8192}
    spec["resources"]["gpuTypes"] = [{"model": "A100", "relativeThroughput": 1.0}]
    spec["retrain"]["startTime"] = now_rfc3339(start)
    spec["retrain"]["configs"] = [{"name": CONFIG.name, "workGpuSeconds": CONFIG.work_gpu_s}]
    spec["accuracy"] = accuracy_json(CURVE, 0.5)
    return manifest


def window_pods(pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The CTJs' pods by CTJ name (one pod a window here)."""
    return {
        p["metadata"]["labels"][NAME_LABEL]: p
        for p in pods
        if NAME_LABEL in p["metadata"]["labels"] and not p["metadata"].get("deletionTimestamp")
    }


def grant(pod: dict[str, Any]) -> tuple[str, str, str] | None:
    """(node, GPU, milli-GPU) of a bound pod, None while it waits."""
    node = pod["spec"].get("nodeName")
    notes = pod["metadata"]["annotations"]
    return (node, notes[ASSIGNED_GPUS], notes[ASSIGNED_MILLI]) if node else None


def thief(
    env: CtjEnvironment, tmp_path: Path, backend: str
) -> AbstractAsyncContextManager[ServeProcess]:
    extra = (f"--round-seconds={ROUND_S}", f"--backend={backend}")
    return serving(env, tmp_path / "serve.log", "thief", extra)


def test_a_sharing_backend_runs_two_half_gpu_windows_on_one_gpu(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.api.call("POST", "/api/v1/nodes", body=hami_node(NODE))
        async with thief(ctj_env, tmp_path, "hami") as controller:
            start = math.ceil(time.time()) + 2.0
            for name in ("p", "q"):
                await create_ctj(admin.api, half_gpu_ctj(name, start, runtime="200s"))

            async def both_running() -> dict[str, dict[str, Any]] | None:
                pods = window_pods(await admin.pods())
                running = all(p["status"].get("phase") == "Running" for p in pods.values())
                return pods if len(pods) == 2 and running else None

            pods = await eventually(both_running, timeout_s=60, what="both windows running")
            assert {n: grant(p) for n, p in pods.items()} == {
                "p": (NODE.name, "0", "500"),
                "q": (NODE.name, "0", "500"),
            }
            assert controller.stop() == 0

    run(ctj_env, scenario)


def test_the_whole_gpu_backend_gives_one_window_the_gpu_and_the_other_waits_for_it(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NODE])
        async with thief(ctj_env, tmp_path, "whole") as controller:
            start = math.ceil(time.time()) + 2.0
            for name in ("p", "q"):
                await create_ctj(admin.api, half_gpu_ctj(name, start, runtime="8s"))

            async def first_bound() -> dict[str, dict[str, Any]] | None:
                pods = window_pods(await admin.pods())
                return pods if len(pods) == 2 and any(map(grant, pods.values())) else None

            pods = await eventually(first_bound, timeout_s=60, what="a window bound")
            assert {n: grant(p) for n, p in pods.items()} == {
                "p": (NODE.name, "0", "1000"),
                "q": None,
            }

            async def second_bound() -> bool:
                q = window_pods(await admin.pods()).get("q")
                return q is not None and grant(q) == (NODE.name, "0", "1000")

            await eventually(second_bound, timeout_s=60, what="q bound once p finished")
            p = window_pods(await admin.pods())["p"]
            assert p["status"]["phase"] == "Succeeded"
            assert controller.stop() == 0

    run(ctj_env, scenario)
