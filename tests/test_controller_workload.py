"""Pods to the policy's jobs: gangs, queue order, what a pod states about itself."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from controller.kube.objects import (
    GANG_SIZE,
    GPU_MODELS,
    JOB_LABEL,
    POD_GROUP_LABEL,
    PREEMPTIBLE,
    RUNTIME,
    PodClaim,
    parse_duration,
    pod_from_json,
)
from controller.scheduling.encoders import Hami, WholeGpu
from controller.scheduling.workload import build_workload
from policies import FixedDuration, TaskRequest


def pod(
    name: str,
    created: str = "2026-01-01T00:00:00Z",
    gpus: int = 1,
    labels: dict[str, str] | None = None,
    notes: dict[str, str] | None = None,
) -> Any:
    return pod_from_json(
        {
            "metadata": {
                "uid": f"u-{name}",
                "name": name,
                "namespace": "ns",
                "creationTimestamp": created,
                "labels": labels or {},
                "annotations": notes or {},
            },
            "spec": {
                "schedulerName": "gpufleet",
                "containers": [
                    {
                        "resources": {
                            "requests": {"cpu": "2", "memory": "4Gi"},
                            "limits": {"nvidia.com/gpu": str(gpus)},
                        }
                    }
                ],
            },
        }
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5m", 90.0)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a Go duration"):
        parse_duration("90 seconds")


def test_single_pods_become_jobs_in_creation_then_arrival_order() -> None:
    pods = [pod("late", "2026-01-01T00:00:05Z"), pod("b"), pod("a")]
    seq = {"u-late": 0, "u-b": 1, "u-a": 2}
    work = build_workload(pods, seq, WholeGpu())
    assert [j.spec.id for j in work.pending] == ["ns/b", "ns/a", "ns/late"]
    spec = work.pending[0].spec
    assert spec.task == TaskRequest(2000, 4096, 1, 1000)
    assert spec.work == FixedDuration(3600.0)


def test_a_gang_is_preemptible_only_if_every_pod_says_so() -> None:
    labels = {JOB_LABEL: "g"}
    pods = [pod("g-0", labels=labels), pod("g-1", labels=labels, notes={PREEMPTIBLE: "false"})]
    (job,) = build_workload(pods, {}, WholeGpu()).pending
    assert job.spec.preemptible is False
    (alone,) = build_workload([pod("x", notes={PREEMPTIBLE: "TRUE"})], {}, WholeGpu()).pending
    assert alone.spec.preemptible is True


def test_stated_runtime_and_models_reach_the_job() -> None:
    notes = {RUNTIME: "2m", GPU_MODELS: "A100|V100"}
    (job,) = build_workload([pod("x", notes=notes)], {}, WholeGpu()).pending
    assert job.spec.work == FixedDuration(120.0)
    assert job.spec.allowed_models == frozenset({"A100", "V100"})


def test_a_recreated_pod_carries_its_service_per_gpu_model() -> None:
    notes = {"gpufleet.io/attained-gpu-s-by-model": '{"A100": 30.5, "V100": 12}'}
    (job,) = build_workload([pod("x-r1", notes=notes)], {}, WholeGpu()).pending
    assert job.view().service_by_model == {"A100": 30.5, "V100": 12.0}


def test_gang_waits_for_all_members_then_is_one_job() -> None:
    labels = {POD_GROUP_LABEL: "train"}
    size = {GANG_SIZE: "3"}
    members = [pod(f"train-{i}", labels=labels, notes=size) for i in (1, 0)]
    work = build_workload(members, {}, WholeGpu())
    assert work.pending == [] and work.waiting == {"ns/train": "gang has 2 of 3 pods"}
    members.append(pod("train-2", labels=labels, notes=size))
    (job,) = build_workload(members, {}, WholeGpu()).pending
    assert job.spec.replicas == 3
    assert [p.name for p in job.pods] == ["train-0", "train-1", "train-2"]


def test_gang_members_must_ask_for_the_same_resources() -> None:
    labels = {JOB_LABEL: "mixed"}
    work = build_workload(
        [pod("m-0", labels=labels), pod("m-1", gpus=2, labels=labels)], {}, WholeGpu()
    )
    (rejected,) = work.rejected
    assert "ask for different resources" in rejected.problem.message
    assert work.pending == []


def test_bad_share_annotation_is_rejected_not_crashing() -> None:
    work = build_workload([pod("bad", notes={"gpufleet.io/gpu-milli": "1500"})], {}, WholeGpu())
    assert work.pending == []
    assert work.rejected[0].problem.field == "metadata.annotations[gpufleet.io/gpu-milli]"
    assert "1..1000" in work.rejected[0].problem.message


@pytest.mark.parametrize("gpus", [0, 2])
def test_a_share_on_a_pod_not_asking_one_gpu_is_reported_not_scheduled(gpus: int) -> None:
    """Half a GPU asked by a pod that asks 0 GPUs would have run on a CPU node with no
    GPU (a dev-cluster walkthrough placed it on system-node-0); with 2 it would hold two
    whole GPUs. Either way the author meant something else: the pod is set aside with
    the field named, and its neighbours are scheduled."""
    share = {"gpufleet.io/gpu-milli": "500"}
    pods = [pod("half", gpus=gpus, notes=share), pod("fine", notes=share)]
    work = build_workload(pods, {}, Hami())
    (rejected,) = work.rejected
    assert rejected.job_id == "ns/half"
    assert rejected.problem.field == "metadata.annotations[gpufleet.io/gpu-milli]"
    assert rejected.problem.message == (
        f"500 is a share of one GPU: the pod must ask for exactly 1 GPU (--backend hami), "
        f"not {gpus}"
    )
    (fine,) = work.pending
    assert fine.spec.task == TaskRequest(2000, 4096, 1, 500)


def test_a_whole_share_annotation_asks_nothing_of_the_gpu_count() -> None:
    work = build_workload([pod("two", gpus=2, notes={"gpufleet.io/gpu-milli": "1000"})], {}, Hami())
    assert work.rejected == [] and work.pending[0].spec.task.num_gpus == 2


def test_a_share_on_a_pod_with_claims_is_reported() -> None:
    body = pod("claims", gpus=0, notes={"gpufleet.io/gpu-milli": "250"})
    claimed = replace(body, claims=(PodClaim("gpu", "claim-1"),))
    (rejected,) = build_workload([claimed], {}, WholeGpu()).rejected
    assert "asks its share in the claim" in rejected.problem.message


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("gpufleet.io/attained-gpu-s", "abc", "not a number"),
        ("gpufleet.io/attained-gpu-s", "-5", "outside"),
        ("gpufleet.io/attained-gpu-s", "nan", "not a number"),
        ("gpufleet.io/attained-gpu-s", "１２", "not a number"),
        ("gpufleet.io/restarts", "1.5", "not a whole number"),
        ("gpufleet.io/gang-size", "0", "outside"),
        ("gpufleet.io/gang-size", "٣", "not a whole number"),
        ("gpufleet.io/submit-time", "1e400", "outside"),
        ("gpufleet.io/sim-runtime", "0s", "positive duration"),
        ("gpufleet.io/gpu-models", "||", "names no GPU model"),
        ("gpufleet.io/preemptible", "maybe", "neither true nor false"),
        ("gpufleet.io/attained-gpu-s-by-model", "[1]", "not a JSON object"),
        ("gpufleet.io/attained-gpu-s-by-model", '{"A100": -1}', "needs seconds"),
        ("gpufleet.io/attained-gpu-s-by-model", '{"A100": NaN}', "needs seconds"),
        ("gpufleet.io/attained-gpu-s-by-model", '{"A100": true}', "needs seconds"),
    ],
)
def test_a_bad_annotation_rejects_the_whole_gang_naming_the_field(
    key: str, value: str, says: str
) -> None:
    labels = {JOB_LABEL: "g"}
    members = [pod("g-0", labels=labels), pod("g-1", labels=labels, notes={key: value})]
    work = build_workload(members, {}, WholeGpu())
    assert work.pending == [] and work.waiting == {}
    (rejected,) = work.rejected
    assert rejected.problem.field == f"metadata.annotations[{key}]"
    assert says in rejected.problem.message
    assert {p.name for p in rejected.pods} == {"g-0", "g-1"}


def test_a_bad_pod_does_not_hold_back_the_good_ones() -> None:
    pods = [pod("bad", notes={"gpufleet.io/restarts": "many"}), pod("good")]
    work = build_workload(pods, {}, WholeGpu())
    assert [j.spec.id for j in work.pending] == ["ns/good"]
    assert [r.job_id for r in work.rejected] == ["ns/bad"]


def test_a_job_queues_from_its_submit_time_within_its_whole_creation_second() -> None:
    """creationTimestamp has whole seconds: a pod created at 00:00:00.7 that declares
    it was submitted at .5 (a CTJ window's opening) has waited since .5, as in the
    simulator; one declaring an earlier time has waited since its creation."""
    created = "2026-01-01T00:00:00Z"
    second = pod("w", created).created
    late = pod("w", created, notes={"gpufleet.io/submit-time": f"{second + 0.5:.3f}"})
    early = pod("e", created, notes={"gpufleet.io/submit-time": "12.0"})
    (late_job,) = build_workload([late], {}, WholeGpu()).pending
    (early_job,) = build_workload([early], {}, WholeGpu()).pending
    assert late_job.view().queued_since == second + 0.5
    assert early_job.view().queued_since == second
