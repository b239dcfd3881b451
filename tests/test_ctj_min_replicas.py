"""`replicas.min` above 1 is an elastic lower bound: a window never runs on fewer GPUs,
starts at its minimum when only that much is free and grows to its maximum, in the
simulator (`StreamSpec.min_gpus`) and through the controller's scheduler (a CTJ with
`replicas: {min: 2, max: 4}`).

Hand-worked, one node of 4 A100s; ceiling 0.9, floor 0.3, no decay, h = 50, one config
of 200 reference-GPU-seconds; speed-up 1.8 on 2 GPUs and 3.24 on 4 (0.9 per doubling);
the window opens at 1 s (deadline 251 s, end 301 s), restart cost 10 s, rounds every 2 s.
Batch jobs hold 3 GPUs from 0 (`two`: 2 GPUs to 39 s, `one`: 1 GPU to 19 s); a CPU-only
`probe` arrives at 41 s (an arrival makes the next round re-plan running windows).

* min 2 under `thief` and `edf`: with 1 GPU free the window waits; the round at 20 s
  starts it on 2 GPUs; the round at 42 s moves it to 4 (done 22·1.8 = 39.6, so 160.4
  left: 42 + 10 + 160.4/3.24 = 101.506 s against 42 + 160.4/1.8 = 131.1 s if kept).
  GPU-seconds 2·22 + 4·59.506 = 282.02.
* min 1 (the control): it starts at 2 s on the one free GPU, keeps it to 42 s (rounds
  between arrivals do not enlarge running windows) and then moves to 4:
  42 + 10 + 160/3.24 = 101.383 s.
* `fairshare` with min 2: it starts on 2 GPUs at 20 s and keeps them (4 is within a
  factor of two of fair): 20 + 200/1.8 = 131.11 s.
* `fifo` (an ordinary policy) places the window as a gang of its minimum, 2 pods, when
  `one` ends at 19 s: 19 + 200/1.8 = 130.11 s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import ctj_from_json
from controller.ctj.plan import plan
from controller.kube.objects import ASSIGNED_GPUS, RESTARTS, pod_from_json
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.scheduler import Scheduler, SchedulerOptions
from controller.scheduling.workload import build_workload
from policies import FixedDuration, JobSpec, NodeSpec, TaskRequest, make_policy
from policies.continual import AccuracyCurve, RetrainConfig, StreamSpec
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.conftest import accuracy_json, ctj_metadata
from tests.test_controller_scheduler import node_json, pod_json
from tests.test_ctj_elastic import GrowingEffects
from traces.continual import ContinualSpec, generate_streams, read_streams, write_streams

CURVE = AccuracyCurve(ceiling=0.9, floor=0.3, decay_per_h=0.0, half_gain_gpu_s=50.0)
CONFIG = RetrainConfig("only", work_gpu_s=200.0)
NODE = NodeSpec("a", 32_000, 131_072, 4, "A100")
ROUND_S = 2.0


def stream(min_gpus: int) -> StreamSpec:
    return StreamSpec(
        id="s",
        start_s=1.0,
        window_s=300.0,
        windows=1,
        deadline_s=250.0,
        task=TaskRequest(1000, 1024, 1, 1000),
        throughput={"A100": 1.0},
        curve=CURVE,
        configs=(CONFIG,),
        initial_accuracy=0.5,
        max_gpus=4,
        min_gpus=min_gpus,
    )


def batch(job_id: str, gpus: int, runtime_s: float, submit: float = 0.0) -> JobSpec:
    task = TaskRequest(1000, 1024, 1, 1000) if gpus else TaskRequest(1000, 1024)
    return JobSpec(job_id, submit, task, FixedDuration(runtime_s), replicas=max(gpus, 1))


def window_row(policy: str, min_gpus: int) -> dict[str, object]:
    """The window's record after a run with 3 of the 4 GPUs held at its opening."""
    jobs = [batch("two", 2, 39.0), batch("one", 1, 19.0), batch("probe", 0, 1.0, submit=41.0)]
    options = {"realloc_s": ROUND_S} if policy != "fifo" else {}
    run = ContinualRun([NODE], [stream(min_gpus)], make_policy(policy, options), batch_jobs=jobs)
    run.run()
    (row,) = run.rows
    return dict(zip(STREAM_COLUMNS, row, strict=True))


def outcome(row: dict[str, object]) -> tuple[object, ...]:
    return row["status"], row["end_s"], row["gpu_s"], row["restarts"], row["replicas"]


@pytest.mark.parametrize("policy", ["thief", "edf"])
def test_a_window_of_min_2_waits_on_1_gpu_starts_on_2_and_grows_to_4(policy: str) -> None:
    end = 42 + 10 + (200 - 22 * 1.8) / 3.24
    expected = ("completed", pytest.approx(end), pytest.approx(2 * 22 + 4 * (end - 42)), 1, 4)
    assert outcome(window_row(policy, 2)) == expected


@pytest.mark.parametrize("policy", ["thief", "edf"])
def test_a_window_of_min_1_starts_on_the_one_free_gpu(policy: str) -> None:
    end = 42 + 10 + (200 - 40 * 1.0) / 3.24
    expected = ("completed", pytest.approx(end), pytest.approx(40 + 4 * (end - 42)), 1, 4)
    assert outcome(window_row(policy, 1)) == expected


def test_fairshare_starts_a_window_of_min_2_on_2_gpus() -> None:
    expected = ("completed", pytest.approx(20 + 200 / 1.8), pytest.approx(200 / 1.8 * 2), 0, 2)
    assert outcome(window_row("fairshare", 2)) == expected


def test_an_ordinary_policy_places_the_minimum_as_a_gang() -> None:
    expected = ("completed", pytest.approx(19 + 200 / 1.8), pytest.approx(200 / 1.8 * 2), 0, 2)
    assert outcome(window_row("fifo", 2)) == expected


def test_a_window_job_has_min_replicas_and_elastic_bounds() -> None:
    job = stream(2).window_job(0, 0, 0.5)
    assert job.replicas == 2
    assert job.elastic is not None
    assert (job.elastic.min_replicas, job.elastic.max_replicas) == (2, 4)


@pytest.mark.parametrize(
    ("milli", "min_gpus", "max_gpus", "message"),
    [
        (500, 2, 4, "min_gpus above 1 needs whole GPUs"),
        (1000, 3, 2, "1 <= min_gpus <= max_gpus"),
        (1000, 0, 2, "1 <= min_gpus <= max_gpus"),
    ],
)
def test_a_stream_refuses_bounds_it_cannot_honour(
    milli: int, min_gpus: int, max_gpus: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StreamSpec(
            id="bad",
            start_s=0.0,
            window_s=300.0,
            windows=1,
            deadline_s=250.0,
            task=TaskRequest(1000, 1024, 1, milli),
            throughput={"A100": 1.0},
            curve=CURVE,
            configs=(CONFIG,),
            max_gpus=max_gpus,
            min_gpus=min_gpus,
        )


def test_a_streams_file_keeps_min_gpus(tmp_path: Path) -> None:
    path = tmp_path / "streams.csv"
    write_streams([stream(2)], path)
    (read,) = read_streams(path)
    assert (read.min_gpus, read.max_gpus) == (2, 4)


# -- the controller: a CTJ with replicas {min: 2, max: 4}, the same hand-worked case ----

CREATED = 1_700_000_040.0
OPENS = CREATED + 1.0


def ctj_json(
    min_replicas: int = 2,
    milli: int = 1000,
    *,
    name: str = "lower",
    max_replicas: int = 4,
    config: RetrainConfig = CONFIG,
) -> dict[str, Any]:
    """A CTJ of one window opening at `OPENS` (300 s long, deadline 250 s), at 0.5."""
    gpu: dict[str, int] = {"count": 1, "milli": milli}
    if milli < 1000:
        gpu["memoryMiB"] = 8192
    return {
        "metadata": ctj_metadata(name, now_rfc3339(CREATED)),
        "spec": {
            "image": "retrain:1",
            "replicas": {"min": min_replicas, "max": max_replicas},
            "retrain": {
                "startTime": now_rfc3339(OPENS),
                "windowSeconds": 300,
                "deadlineSeconds": 250,
                "windows": 1,
                "configs": [{"name": config.name, "workGpuSeconds": config.work_gpu_s}],
            },
            "resources": {
                "gpu": gpu,
                "cpu": "1",
                "memory": "1Gi",
                "gpuTypes": [{"model": "A100", "relativeThroughput": 1.0}],
            },
            "accuracy": accuracy_json(CURVE, 0.5),
        },
    }


def window_pods(names: tuple[str, ...] = (), uid: str = "") -> list[dict[str, Any]]:
    """The window's pods as the API serves them: the CTJ's `replicas.min` at the opening,
    or copies of replica 0 named `names` (pods the scheduler added, or recreated ones)."""
    result = plan(ctj_from_json(ctj_json()), [], OPENS, "gpufleet")
    first = result.create[0]
    pods: list[dict[str, Any]] = []
    for manifest in result.create if not names else [first] * len(names):
        meta = dict(manifest["metadata"])
        meta["name"] = names[len(pods)] if names else meta["name"]
        meta.update(uid=f"{uid}{meta['name']}", creationTimestamp=now_rfc3339(OPENS))
        pods.append({**manifest, "metadata": meta, "status": {"phase": "Pending"}})
    return pods


def running(pod: dict[str, Any], notes: dict[str, str]) -> dict[str, Any]:
    meta = {**pod["metadata"], "annotations": {**pod["metadata"]["annotations"], **notes}}
    return {
        **pod,
        "metadata": meta,
        "spec": {**pod["spec"], "nodeName": "a"},
        "status": {"phase": "Running"},
    }


def test_the_ctj_creates_min_pods_and_its_window_job_has_the_streams_bounds() -> None:
    pods = [pod_from_json(p) for p in window_pods()]
    assert [p.name for p in pods] == ["lower-w0-0", "lower-w0-1"]
    (job,) = build_workload(pods, {}, WholeGpu()).pending
    simulated = stream(2).window_job(0, 0, 0.5)
    assert (job.spec.replicas, job.spec.elastic) == (2, simulated.elastic)
    (one,) = window_pods(("lower-w0-0",))
    assert build_workload([pod_from_json(one)], {}, WholeGpu()).waiting  # a gang of 2


def test_thief_waits_on_one_free_gpu_binds_two_and_grows_the_window_to_four() -> None:
    async def main() -> None:
        clock = [OPENS + 1]
        cache = ClusterCache(WholeGpu())
        cache.replace(NODES, [node_json("a", 4)])
        effects = GrowingEffects(cache)
        options = SchedulerOptions(external_rounds=True)
        policy = make_policy("thief", {"realloc_s": ROUND_S})
        scheduler = Scheduler(policy, cache, effects, options, clock=lambda: clock[0])  # type: ignore[arg-type]
        loop = asyncio.create_task(scheduler.run())

        async def round_at(seconds: float) -> None:
            clock[0] = OPENS + seconds
            scheduler.request_round()
            await scheduler.wait_idle()

        try:
            cache.apply(PODS, "ADDED", pod_json("two", gpus=2, node="a"))
            cache.apply(PODS, "ADDED", pod_json("one", gpus=1, node="a"))
            pods = window_pods()
            for pod in pods:
                cache.apply(PODS, "ADDED", pod)
            await round_at(1)
            assert (effects.binds, effects.added) == ([], [])  # 1 GPU free: below min 2
            cache.apply(PODS, "DELETED", pod_json("one", gpus=1, node="a"))
            await round_at(19)
            binds = {name: notes for name, _, notes in effects.binds}
            assert sorted(binds) == ["lower-w0-0", "lower-w0-1"] and not effects.added
            for pod in pods:
                cache.apply(PODS, "MODIFIED", running(pod, binds[pod["metadata"]["name"]]))
            # `two` ends; an arrival (a CPU-only pod) makes the round re-plan running jobs.
            cache.apply(PODS, "DELETED", pod_json("two", gpus=2, node="a"))
            cache.apply(PODS, "ADDED", pod_json("probe", gpus=0))
            effects.binds.clear()
            await round_at(41)
            assert sorted(e[0] for e in effects.evicted) == ["lower-w0-0", "lower-w0-1"]
            for pod in pods:  # withdrawn; the CTJ recreates its replicas.min pods
                cache.apply(PODS, "DELETED", pod)
            for pod in window_pods(("lower-w0-0", "lower-w0-1"), uid="again-"):
                cache.apply(PODS, "ADDED", pod)
            await scheduler.wait_idle()
            assert effects.added == [("lower-w0-0", ["lower-w0-2", "lower-w0-3"])]
            for pod in window_pods(("lower-w0-2", "lower-w0-3"), uid="added-"):
                cache.apply(PODS, "ADDED", pod)
            await scheduler.wait_idle()
            binds = {name: notes for name, _, notes in effects.binds if name.startswith("lower")}
            assert sorted(binds) == [f"lower-w0-{r}" for r in range(4)]
            assert sorted(notes[ASSIGNED_GPUS] for notes in binds.values()) == ["0", "1", "2", "3"]
            assert {notes[RESTARTS] for notes in binds.values()} == {"1"}
        finally:
            loop.cancel()

    asyncio.run(main())


def test_a_valued_ctj_refuses_a_fractional_gpu_with_min_above_1() -> None:
    ctj = ctj_from_json(ctj_json(min_replicas=2, milli=500))
    assert ctj.problem is not None and ctj.problem.field == "spec.replicas.min"
    assert "needs whole GPUs" in ctj.problem.message
    assert ctj_from_json(ctj_json(min_replicas=1, milli=500)).problem is None


def test_generated_streams_take_min_gpus_and_refuse_a_fraction_above_1() -> None:
    streams = generate_streams(ContinualSpec(streams=3, windows=2, min_gpus=2))
    assert {(s.min_gpus, s.max_gpus) for s in streams} == {(2, 4)}
    with pytest.raises(ValueError, match="min_gpus above 1 needs a whole-GPU request"):
        generate_streams(ContinualSpec(streams=3, windows=2, min_gpus=2, request_milli=500))
