"""The accuracy-aware allocators on ContinualTrainingJobs, live: the controller as
deployed (`python -m controller.serve serve --policy=thief`) on the real API server,
and the simulator on the same two streams.

The hand-worked case (tests/test_ctj_continual.py at a faster scale): one A100; ceiling
0.9, no decay, h = 20 reference-GPU-seconds, one config of 20 (f = 1/2). Stream A starts
at 0.5 (gain 0.2), B at 0.7 (gain 0.1). Both windows open together, 40 s long with a
30 s deadline: the whole GPU retrains in 20 s, half of it in 40 s (past the deadline),
so the GPU serves one retraining, and after it the other can no longer finish in time.
`thief` gives the GPU to A, which gains more: A's window completes, B's is missed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import NAME_LABEL, object_path
from controller.devcluster.fleet import NAMESPACE, Admin
from controller.kube.objects import parse_time
from controller.scheduling.effects import now_rfc3339
from policies import NodeSpec, TaskRequest, make_policy
from policies.continual import AccuracyCurve, DriftTrigger, RetrainConfig, StreamSpec
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.conftest import accuracy_json
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    get_ctj,
    run,
    serving,
)
from tests.kube.helpers import eventually

pytestmark = pytest.mark.kube

NODE = NodeSpec("a100-0", 16_000, 65_536, 1, "A100")
CURVE = AccuracyCurve(ceiling=0.9, floor=0.5, decay_per_h=0.0, half_gain_gpu_s=20.0)
CONFIG = RetrainConfig("only", work_gpu_s=20.0)
WINDOW_S, DEADLINE_S = 40, 30
ROUND_S = 2.0
INITIAL = {"gain-more": 0.5, "gain-less": 0.7}


def continual_ctj(name: str, start: float, initial: float | None = None) -> dict[str, Any]:
    manifest = ctj_manifest(
        name,
        window_s=WINDOW_S,
        deadline_s=DEADLINE_S,
        windows=1,
        runtime=f"{CONFIG.work_gpu_s:g}s",  # a whole A100 does the work in this time
        replicas=1,
        gpu_models=("A100",),
    )
    spec = manifest["spec"]
    spec["resources"]["gpuTypes"] = [{"model": "A100", "relativeThroughput": 1.0}]
    spec["retrain"]["startTime"] = now_rfc3339(start)
    spec["retrain"]["configs"] = [
        {"name": CONFIG.name, "workGpuSeconds": CONFIG.work_gpu_s, "quality": CONFIG.quality}
    ]
    spec["accuracy"] = accuracy_json(CURVE, INITIAL[name] if initial is None else initial)
    return manifest


def simulated_outcomes() -> dict[str, str]:
    """The same streams through the simulator's ContinualRun and thief."""
    streams = [
        StreamSpec(
            id=name,
            start_s=0.0,
            window_s=WINDOW_S,
            windows=1,
            deadline_s=DEADLINE_S,
            task=TaskRequest(1000, 1024, 1, 1000),
            throughput={"A100": 1.0},
            curve=CURVE,
            configs=(CONFIG,),
            initial_accuracy=initial,
            allowed_models=frozenset({"A100"}),
        )
        for name, initial in INITIAL.items()
    ]
    run = ContinualRun([NODE], streams, make_policy("thief", {"realloc_s": ROUND_S}))
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    return {str(r[col["stream_id"]]): str(r[col["status"]]) for r in run.rows}


def test_thief_gives_the_only_gpu_to_the_stream_that_gains_more(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert simulated_outcomes() == {"gain-more": "completed", "gain-less": "expired"}

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NODE])
        async with serving(
            ctj_env, tmp_path / "serve.log", "thief", (f"--round-seconds={ROUND_S}",)
        ) as serve:
            start = math.ceil(time.time()) + 3.0  # both windows open at this instant
            for name in INITIAL:
                await create_ctj(admin.api, continual_ctj(name, start))

            async def both_recorded() -> bool:
                jobs = [await get_ctj(admin.api, n) for n in INITIAL]
                return all((j or {}).get("status", {}).get("windowsRecorded") for j in jobs)

            await eventually(both_recorded, timeout_s=90, what="both windows recorded")
            outcomes = {}
            for name in INITIAL:
                job = await get_ctj(admin.api, name)
                assert job is not None
                (only,) = job["status"]["history"]
                outcomes[name] = only["outcome"]
                model = job["status"]["model"]
                if only["outcome"] == "Completed":
                    assert model["accuracy"] == pytest.approx(INITIAL[name] + 0.2)
                else:
                    assert model["accuracy"] == INITIAL[name]
            assert outcomes == {"gain-more": "Completed", "gain-less": "Missed"}
            pods = await admin.pods()
            ran = {
                p["metadata"]["labels"][NAME_LABEL]
                for p in pods
                if p["status"].get("phase") == "Succeeded"
            }
            assert ran == {"gain-more"}
            assert serve.stop() == 0

    run(ctj_env, scenario)


HALVING_10S = AccuracyCurve(0.9, 0.5, decay_per_h=360 * math.log(2), half_gain_gpu_s=2.0)
"""The gap to the ceiling halves every 10 s."""


def triggered_ctj(name: str, start: float, trigger: dict[str, float], curve: AccuracyCurve) -> Any:
    manifest = continual_ctj(name, start, initial=0.9)
    spec = manifest["spec"]
    spec["retrain"].update(windowSeconds=20, deadlineSeconds=10, windows=1, trigger=trigger)
    spec["retrain"]["configs"] = [{"name": "quick", "workGpuSeconds": 2.0}]
    spec["podMetadata"]["annotations"]["gpufleet.io/sim-runtime"] = "2s"
    spec["accuracy"].update(
        decayPerHour=curve.decay_per_h, halfGainGpuSeconds=curve.half_gain_gpu_s
    )
    return manifest


def test_drift_triggers_open_windows_when_accuracy_falls(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`stale` decays from 0.9 and triggers on a 0.1 drop: at 10·log2(4/3) = 4.15 s
    after its start (as the simulator's triggered stream does). `measured` does not
    decay and triggers below 0.6: only the accuracy its evaluation job reports, 0.55,
    fires it."""
    still = AccuracyCurve(0.9, 0.5, decay_per_h=0.0, half_gain_gpu_s=2.0)
    crossing = 10 * math.log2(4 / 3)
    simulated = StreamSpec(
        id="stale",
        start_s=0.0,
        window_s=20.0,
        windows=2,
        deadline_s=10.0,
        task=TaskRequest(1000, 1024, 1, 1000),
        throughput={"A100": 1.0},
        curve=HALVING_10S,
        configs=(RetrainConfig("quick", 2.0),),
        trigger=DriftTrigger(drop=0.1, min_gap_s=5),
    )
    sim = ContinualRun([NODE], [simulated], make_policy("thief", {"realloc_s": ROUND_S}))
    sim.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    first = sim.rows[0]
    assert first[col["start_s"]] == pytest.approx(crossing)
    assert (first[col["status"]], first[col["acc_start"]]) == ("completed", pytest.approx(0.8))

    async def scenario(admin: Admin) -> None:
        await admin.create_nodes([NODE])
        async with serving(
            ctj_env, tmp_path / "serve.log", "thief", (f"--round-seconds={ROUND_S}",)
        ) as serve:
            start = math.ceil(time.time()) + 2.0
            stale = triggered_ctj("stale", start, {"drop": 0.1, "minGapSeconds": 5}, HALVING_10S)
            await create_ctj(admin.api, stale)
            measured = triggered_ctj("measured", start, {"below": 0.6, "minGapSeconds": 5}, still)
            await create_ctj(admin.api, measured)

            async def recorded(name: str) -> dict[str, Any] | None:
                job = await get_ctj(admin.api, name)
                status = (job or {}).get("status", {})
                return status if status.get("windowsRecorded") else None

            status = await eventually(lambda: recorded("stale"), 60, "stale's window recorded")
            opened = parse_time(status["currentWindow"]["start"])
            assert opened == pytest.approx(start + crossing, abs=1e-3)
            assert [h["outcome"] for h in status["history"]] == ["Completed"]
            assert status["model"]["accuracy"] == pytest.approx(0.85)  # 0.8 + 0.1·½

            job = await get_ctj(admin.api, "measured")
            assert job is not None and "currentWindow" not in job["status"]
            seen = time.time()
            report = {"status": {"observedAccuracy": {"value": 0.55, "time": now_rfc3339(seen)}}}
            await admin.api.call(
                "PATCH",
                object_path(NAMESPACE, "measured") + "/status",
                body=report,
                content_type="application/merge-patch+json",
            )
            status = await eventually(
                lambda: recorded("measured"), 60, "measured's window recorded"
            )
            assert parse_time(status["currentWindow"]["start"]) >= math.floor(seen)
            assert [h["outcome"] for h in status["history"]] == ["Completed"]
            # From the measured 0.55, half the gap to 0.9: 0.725.
            assert status["model"]["accuracy"] == pytest.approx(0.725)
            assert status["observedAccuracy"]["value"] == 0.55
            assert serve.stop() == 0

    run(ctj_env, scenario)
