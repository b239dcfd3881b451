"""Capturing a snapshot from the controller's cache (controller/whatif/capture.py),
without an API server: what each pod becomes, and objects that cannot be read are named
in `problems` instead of stopping the capture. The live path is tests/kube/test_kube_whatif.py."""

from __future__ import annotations

from typing import Any

import pytest

from controller.ctj.crd import ctj_from_json
from controller.devcluster.fleet import node_manifest
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.encoders import WholeGpu
from controller.whatif.capture import added_jobs, capture
from policies import NodeSpec
from tests.test_dashboard import pod

NOW = 1_767_225_700.0  # 100 s after the pods' creation (2026-01-01T00:00:00Z)


def annotated(name: str, gpus: int, node: str = "", **annotations: str) -> dict[str, Any]:
    obj = pod(name, gpus, node)
    obj["metadata"]["annotations"] = annotations
    return obj


RUN_NOTES = {"gpufleet.io/sim-runtime": "300s", "gpufleet.io/bound-at": f"{NOW - 40}"}


def cache() -> ClusterCache:
    cache = ClusterCache(WholeGpu())
    cache.replace(NODES, [node_manifest(NodeSpec("a", 8000, 32_000, 4, "A100"))])
    cache.replace(
        PODS,
        [
            annotated(
                "run",
                2,
                "a",
                **{"gpufleet.io/sim-runtime": "300s", "gpufleet.io/bound-at": f"{NOW - 40}"},
            ),
            annotated("wait", 1, **{"gpufleet.io/sim-runtime": "1m"}),
            annotated("bad", 1, **{"gpufleet.io/attained-gpu-s": "abc"}),
        ],
    )
    return cache


def test_capture_reads_running_and_pending_pods() -> None:
    snap = capture(cache(), NOW, "bestfit")
    [running] = snap.running
    assert (running.id, running.node, running.num_gpus, running.elapsed_s) == (
        "default/run",
        "a",
        2,
        40.0,
    )
    assert running.runtime_s == 300.0
    [waiting] = snap.pending
    assert (waiting.id, waiting.age_s, waiting.runtime_s) == ("default/wait", 100.0, 60.0)
    assert [(n.name, n.gpus, n.gpu_model) for n in snap.nodes] == [("a", 4, "A100")]
    assert snap.policy == "bestfit"


def test_unreadable_objects_are_named_not_fatal() -> None:
    broken = ctj_from_json(
        {"metadata": {"name": "s", "namespace": "default"}, "spec": {"retrain": "weekly"}}
    )
    snap = capture(cache(), NOW, ctjs=[broken])
    assert any("default/bad" in p and "attained-gpu-s" in p for p in snap.problems)
    assert any(p.startswith("ContinualTrainingJob default/s: spec") for p in snap.problems)
    assert [p.id for p in snap.pending] == ["default/wait"]


def test_added_pod_manifests_become_one_job_each() -> None:
    manifest = annotated("mine", 2, **{"gpufleet.io/sim-runtime": "30s"})
    manifest.update(apiVersion="v1", kind="Pod")
    [job] = added_jobs([manifest], WholeGpu(), NOW)
    assert (job.id, job.num_gpus, job.runtime_s, job.age_s) == ("default/mine", 2, 30.0, 0.0)


def test_an_added_document_that_is_not_a_pod_is_refused() -> None:
    with pytest.raises(ValueError, match="--add document 1: expected a Pod manifest"):
        added_jobs([{"kind": "Job"}], WholeGpu(), NOW)
    bad = annotated("x", 1, **{"gpufleet.io/gang-size": "0"})
    bad.update(kind="Pod")
    with pytest.raises(ValueError, match=r"--add job default/x: .*gang-size"):
        added_jobs([bad], WholeGpu(), NOW)
