"""ContinualTrainingJobs as the simulator's streams: the reconciler's accuracy
bookkeeping (`policies.windows.DeployedModel`), the config the policy chooses, and the
retraining job the scheduler builds from a window's pod, compared with what the
simulator's `StreamSpec.window_job` makes of the same stream. Then the hand-worked
two-stream case: GPUs for one retraining only, and `thief` gives them to the stream
that gains more, in the simulator and on the controller's decoded jobs.

The streams: one A100; ceiling 0.9, no decay, h = 60 reference-GPU-seconds, one config
of 60 (f = 1/2). Stream A starts at 0.5 (gain 0.2), B at 0.7 (gain 0.1). Window 120 s,
deadline 100 s: a whole GPU finishes in 60 s (uplift A 0.2·60 = 12, B 0.1·60 = 6), half a
GPU in 120 s (past the deadline: worth nothing), so only one of them can retrain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from controller.ctj.continual import JointConfigs, WindowChoice
from controller.ctj.crd import ObservedAccuracy, ctj_from_json
from controller.ctj.plan import CtjPod, ctj_pod_from_json, plan
from controller.kube.objects import pod_from_json
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import make_encoder
from controller.scheduling.workload import build_workload
from policies import Context, NodeSpec, Place, Snapshot, TaskRequest, make_policy
from policies.cluster import ClusterState
from policies.continual import (
    RETRAIN_KIND,
    AccuracyCurve,
    DriftTrigger,
    RetrainConfig,
    StreamSpec,
    WindowOpening,
    window_info,
)
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.conftest import accuracy_json, ctj_metadata

CREATED = 1_700_000_040.0  # a whole minute: the simulator's windows start there too
CURVE = AccuracyCurve(ceiling=0.9, floor=0.5, decay_per_h=0.0, half_gain_gpu_s=60.0)
CONFIGS = (RetrainConfig("small", 60.0, 1.0), RetrainConfig("large", 240.0, 1.0))
NODE = NodeSpec("a100-0", cpu_milli=8000, mem_mib=16_384, gpus=1, gpu_model="A100")


def ctj_json(name: str, initial: float, configs: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": ctj_metadata(name, now_rfc3339(CREATED)),
        "spec": {
            "image": "retrain:1",
            "retrain": {
                "windowSeconds": 120,
                "deadlineSeconds": 100,
                "configs": [
                    {"name": c.name, "workGpuSeconds": c.work_gpu_s, "quality": c.quality}
                    for c in CONFIGS[:configs]
                ],
            },
            "resources": {
                "gpu": {"count": 1},
                "cpu": "1",
                "memory": "1Gi",
                "gpuTypes": [{"model": "A100", "relativeThroughput": 1.0}],
            },
            "accuracy": accuracy_json(CURVE, initial),
        },
        "status": status,
    }


def stream(name: str, initial: float, start_s: float = CREATED) -> StreamSpec:
    return StreamSpec(
        id=name,
        start_s=start_s,
        window_s=120.0,
        windows=1,
        deadline_s=100.0,
        task=TaskRequest(1000, 1024, 1, 1000),
        throughput={"A100": 1.0},
        allowed_models=frozenset({"A100"}),
        curve=CURVE,
        configs=CONFIGS[:1],
        initial_accuracy=initial,
        max_gpus=1,
    )


def as_api_pod(manifest: dict[str, Any], phase: str = "Pending") -> dict[str, Any]:
    obj = {**manifest, "status": {"phase": phase}}
    obj["metadata"] = {
        **manifest["metadata"],
        "uid": manifest["metadata"]["name"],
        "creationTimestamp": now_rfc3339(CREATED),
    }
    return obj


def window_pod(name: str, initial: float) -> dict[str, Any]:
    result = plan(ctj_from_json(ctj_json(name, initial)), [], CREATED + 1, "gpufleet")
    (manifest,) = result.create
    return as_api_pod(manifest)


def test_window_pod_carries_the_accuracy_facts_the_simulator_values() -> None:
    pod = pod_from_json(window_pod("a", 0.5))
    workload = build_workload([pod], {}, make_encoder("whole"))
    (job,) = workload.pending
    live = window_info(job.spec)
    simulated = stream("ns/a", 0.5).window_job(0, 0, 0.5)
    expected = window_info(simulated)
    assert job.spec.kind == RETRAIN_KIND and live is not None and expected is not None
    for field in ("index", "start", "deadline", "end", "gain", "decay_per_h", "config"):
        assert getattr(live, field) == getattr(expected, field), field
    assert live.gain == (0.9 - 0.5) * 0.5  # f(60) = 60 / (60 + 60)
    assert job.spec.work.total == simulated.work.total == 60.0
    assert job.spec.elastic == simulated.elastic
    assert job.spec.restart_cost_s == simulated.restart_cost_s


def test_the_policys_config_choice_is_the_windows_config() -> None:
    body = ctj_json("a", 0.5)
    body["spec"]["retrain"]["configs"] = [
        {"name": c.name, "workGpuSeconds": c.work_gpu_s, "quality": c.quality} for c in CONFIGS
    ]
    seen: list[WindowOpening] = []

    def choose(opening: WindowOpening) -> WindowChoice:
        seen.append(opening)
        return WindowChoice(1)

    result = plan(ctj_from_json(body), [], CREATED + 1, "gpufleet", choose)
    (opening,) = seen
    assert (opening.index, opening.acc_start, opening.stream.deadline_s) == (0, 0.5, 100.0)
    notes = result.create[0]["metadata"]["annotations"]
    assert notes["ctj.gpufleet.io/config"] == "large"
    assert float(notes["ctj.gpufleet.io/work-gpu-seconds"]) == 240.0
    assert float(notes["ctj.gpufleet.io/gain"]) == 0.4 * (240 / 300)


def test_a_completed_window_deploys_its_model_and_the_next_window_starts_from_it() -> None:
    job = ctj_from_json(ctj_json("a", 0.5))
    first = plan(job, [], CREATED + 1, "gpufleet")
    job = replace(job, status=first.status)
    pod = ctj_pod_from_json({**as_api_pod(first.create[0]), "spec": {"nodeName": "a100-0"}})
    assert isinstance(pod, CtjPod)
    done = replace(pod, phase="Succeeded", finished_at=CREATED + 70)
    second = plan(job, [done], CREATED + 121, "gpufleet")
    assert [o.outcome for o in second.recorded] == ["Completed"]
    model = second.status.model
    assert model is not None
    # 0.5 + 0.2, learned on the data of the opening (it ages from there).
    assert (model.accuracy, model.since, model.deployed) == (0.7, CREATED, 0.7)
    notes = second.create[0]["metadata"]["annotations"]
    assert float(notes["ctj.gpufleet.io/accuracy-at-start"]) == 0.7
    assert float(notes["ctj.gpufleet.io/gain"]) == (0.9 - 0.7) * 0.5


def test_an_observed_accuracy_replaces_the_curves_estimate() -> None:
    job = ctj_from_json(ctj_json("a", 0.9))
    job = replace(job, status=replace(job.status, observed=ObservedAccuracy(0.6, CREATED + 0.5)))
    notes = plan(job, [], CREATED + 1, "gpufleet").create[0]["metadata"]["annotations"]
    assert float(notes["ctj.gpufleet.io/accuracy-at-start"]) == 0.6
    assert float(notes["ctj.gpufleet.io/gain"]) == (0.9 - 0.6) * 0.5


def test_a_model_at_its_ceiling_has_nothing_to_learn_and_gets_no_pods() -> None:
    result = plan(ctj_from_json(ctj_json("a", 0.9)), [], CREATED + 1, "gpufleet")
    assert result.create == ()
    assert [(o.outcome, o.reason) for o in result.recorded] == [("Completed", "AtCeiling")]


def test_thief_gives_the_only_gpu_to_the_stream_that_gains_more_in_the_simulator() -> None:
    streams = [stream("b", 0.7, start_s=0.0), stream("a", 0.5, start_s=0.0)]
    run = ContinualRun([NODE], streams, make_policy("thief"))
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    status = {r[col["stream_id"]]: r[col["status"]] for r in run.rows}
    assert status == {"a": "completed", "b": "expired"}


def test_thief_gives_the_only_gpu_to_the_stream_that_gains_more_live() -> None:
    pods = [pod_from_json(window_pod("b", 0.7)), pod_from_json(window_pod("a", 0.5))]
    encoder = make_encoder("whole")
    workload = build_workload(pods, {p.uid: i for i, p in enumerate(pods)}, encoder)
    cluster = ClusterState([NODE])
    snapshot = Snapshot(
        cluster=cluster.view(),
        running=[],
        pending=[j.view() for j in workload.pending],
        now=CREATED + 1,
    )
    result = make_policy("thief").schedule(snapshot, Context(np.random.default_rng(0)))
    places = [d for d in result.decisions if isinstance(d, Place)]
    assert [d.job_id for d in places] == ["ns/a-w0"]
    assert places[0].placement.tasks[0].gpu_milli == 1000


HALVING = AccuracyCurve(0.9, 0.5, decay_per_h=3600 * math.log(2) / 600, half_gain_gpu_s=60.0)
"""The gap to the ceiling halves every 600 s (tests/test_continual_triggers.py)."""


def triggered_ctj() -> dict[str, Any]:
    body = ctj_json("t", 0.9)
    body["spec"]["retrain"]["windowSeconds"] = 900
    body["spec"]["retrain"]["deadlineSeconds"] = 300
    body["spec"]["retrain"]["trigger"] = {"drop": 0.1, "minGapSeconds": 400}
    body["spec"]["accuracy"]["decayPerHour"] = HALVING.decay_per_h
    return body


def test_a_drift_trigger_opens_the_window_when_the_simulator_does() -> None:
    # drop 0.1 from the deployed 0.9: θ = 0.8, reached at 600·log2(4/3) = 249.0 s.
    crossing = 600 * math.log2(4 / 3)
    job = ctj_from_json(triggered_ctj())
    early = plan(job, [], CREATED + 100, "gpufleet")
    assert early.create == () and early.requeue_at == pytest.approx(CREATED + crossing, abs=1e-6)
    opened = plan(replace(job, status=early.status), [], CREATED + 250, "gpufleet")
    (manifest,) = opened.create
    notes = manifest["metadata"]["annotations"]
    assert float(notes["ctj.gpufleet.io/window-start"]) == pytest.approx(
        CREATED + crossing, abs=1e-3
    )
    assert float(notes["ctj.gpufleet.io/accuracy-at-start"]) == pytest.approx(0.8)
    window = opened.status.current_window
    assert window is not None and window.deadline == pytest.approx(window.start + 300, abs=1e-6)

    spec = replace(
        stream("t", 0.9, start_s=0.0),
        window_s=900.0,
        windows=3,
        deadline_s=300.0,
        curve=replace(HALVING),
        trigger=DriftTrigger(drop=0.1, min_gap_s=400),
    )
    run = ContinualRun([NODE], [spec], make_policy("fifo"))
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    assert run.rows[0][col["start_s"]] == pytest.approx(crossing)
    assert run.rows[0][col["acc_start"]] == pytest.approx(0.8)


def test_the_next_trigger_is_armed_from_the_deployed_model() -> None:
    job = ctj_from_json(triggered_ctj())
    opened = plan(job, [], CREATED + 250, "gpufleet")
    job = replace(job, status=opened.status)
    pod = ctj_pod_from_json({**as_api_pod(opened.create[0]), "spec": {"nodeName": "a100-0"}})
    assert isinstance(pod, CtjPod) and pod.start is not None
    done = replace(pod, phase="Succeeded", finished_at=pod.start + 60)
    settled = plan(job, [done], pod.start + 61, "gpufleet")
    assert [o.outcome for o in settled.recorded] == ["Completed"]
    assert settled.requeue_at == pod.start + 61  # re-armed at once
    job = replace(job, status=settled.status)
    model = settled.status.model
    assert model is not None and model.accuracy == pytest.approx(0.85)  # 0.8 + 0.1·½
    # Deployed at 0.85 decayed by 60 s; the threshold is 0.1 below that.
    deployed = HALVING.decayed(0.85, 60)
    assert model.deployed == pytest.approx(deployed)
    waiting = plan(job, [done], pod.start + 62, "gpufleet")
    crossing = 600 * math.log2((0.85 - 0.5) / (deployed - 0.1 - 0.5))
    assert crossing < 400  # so the minimum gap since the last trigger decides
    assert waiting.create == ()
    assert waiting.requeue_at == pytest.approx(pod.start + 400, abs=1e-3)


def test_windows_opening_together_are_planned_together() -> None:
    """As the simulator plans an instant's openings in one `plan_windows` call, so does
    the reconciler: the first CTJ's reconcile plans both, the second reads its share."""
    pairs = (("a", 0.5), ("b", 0.7))
    jobs = [ctj_from_json(ctj_json(name, initial, configs=2)) for name, initial in pairs]
    calls: list[list[tuple[str, int, float]]] = []

    def plan_windows(openings: Sequence[WindowOpening]) -> list[WindowChoice]:
        calls.append([(o.stream.id, o.index, o.acc_start) for o in openings])
        return [WindowChoice(0 if o.stream.id == "ns/a" else 1) for o in openings]

    joint = JointConfigs(plan_windows, lambda: jobs, lambda key: [])
    first = plan(jobs[0], [], CREATED + 1, "gpufleet", joint)
    second = plan(jobs[1], [], CREATED + 1, "gpufleet", joint)
    assert calls == [[("ns/a", 0, 0.5), ("ns/b", 0, 0.7)]]
    configs = [
        r.create[0]["metadata"]["annotations"]["ctj.gpufleet.io/config"] for r in (first, second)
    ]
    assert configs == ["small", "large"]


def test_a_drift_trigger_firing_with_periodic_openings_is_planned_with_them() -> None:
    """The simulator plans every opening of an instant together, triggered ones too: a
    CTJ below its trigger at its start opens then, beside a periodic one."""
    periodic = ctj_from_json(ctj_json("a", 0.5, configs=2))
    body = ctj_json("t", 0.6, configs=2)
    body["spec"]["retrain"]["trigger"] = {"below": 0.7, "minGapSeconds": 400}
    drifted = ctj_from_json(body)
    calls: list[list[str]] = []

    def plan_windows(openings: Sequence[WindowOpening]) -> list[WindowChoice]:
        calls.append([o.stream.id for o in openings])
        return [WindowChoice(0) for _ in openings]

    joint = JointConfigs(plan_windows, lambda: [periodic, drifted], lambda key: [])
    plan(periodic, [], CREATED + 1, "gpufleet", joint)
    assert plan(drifted, [], CREATED + 1, "gpufleet", joint).create
    assert calls == [["ns/a", "ns/t"]]


def test_a_window_asked_again_before_its_pods_exist_keeps_its_planned_config() -> None:
    """A reconcile may plan a window again before its pods are seen (its status write
    conflicted, or its pods were all withdrawn): it keeps the config planned with the
    instant's other openings, as the simulator chooses once per window."""
    pairs = (("a", 0.5), ("b", 0.7))
    jobs = [ctj_from_json(ctj_json(name, initial, configs=2)) for name, initial in pairs]
    calls: list[list[str]] = []

    def plan_windows(openings: Sequence[WindowOpening]) -> list[WindowChoice]:
        calls.append([o.stream.id for o in openings])
        return [WindowChoice(len(openings) - 1) for _ in openings]  # 1 together, 0 alone

    joint = JointConfigs(plan_windows, lambda: jobs, lambda key: [])
    first = plan(jobs[0], [], CREATED + 1, "gpufleet", joint)
    again = plan(jobs[0], [], CREATED + 2, "gpufleet", joint)
    configs = [
        r.create[0]["metadata"]["annotations"]["ctj.gpufleet.io/config"] for r in (first, again)
    ]
    assert configs == ["large", "large"] and calls == [["ns/a", "ns/b"]]
