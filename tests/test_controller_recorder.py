"""`controller record`: observed arrivals, placements and ends become a canonical trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.cache import NODES, PODS
from controller.encoders import Hami
from controller.objects import ASSIGNED_GPUS, ASSIGNED_MILLI, GPU_MILLI, RUNTIME
from controller.recorder import TraceRecorder
from policies import FixedDuration, TaskRequest
from traces.canonical import read_jobs, read_nodes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pod(
    name: str,
    created: str,
    node: str = "",
    notes: dict[str, str] | None = None,
    scheduler: str = "gpufleet",
    phase: str = "Pending",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [
            {
                "resources": {
                    "requests": {"cpu": "2", "memory": "1Gi"},
                    "limits": {"nvidia.com/gpu": "1"},
                }
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "uid": name,
            "name": name,
            "namespace": "default",
            "creationTimestamp": created,
            "annotations": notes or {},
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def test_recorded_trace_reads_back_with_observed_times(tmp_path: Path) -> None:
    clock = Clock()
    recorder = TraceRecorder(Hami(), clock=clock)  # a backend that shares GPUs
    recorder.replace(
        NODES,
        [
            {
                "metadata": {"name": "n1", "labels": {"nvidia.com/gpu.product": "T4"}},
                "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}},
            }
        ],
    )
    share = {GPU_MILLI: "500"}
    recorder.replace(PODS, [pod("a", "2026-01-01T00:00:00Z", notes=share)])
    clock.now = 1767225605.0
    recorder.apply(PODS, "ADDED", pod("b", "2026-01-01T00:00:03Z", notes={RUNTIME: "42s"}))
    recorder.apply(
        PODS, "ADDED", pod("foreign", "2026-01-01T00:00:01Z", scheduler="default-scheduler")
    )
    bound = {**share, ASSIGNED_GPUS: "1", ASSIGNED_MILLI: "500"}
    recorder.apply(
        PODS, "MODIFIED", pod("a", "2026-01-01T00:00:00Z", node="n1", notes=bound, phase="Running")
    )
    clock.now += 20
    recorder.apply(
        PODS,
        "MODIFIED",
        pod("a", "2026-01-01T00:00:00Z", node="n1", notes=bound, phase="Succeeded"),
    )
    assert recorder.write(tmp_path) == 2
    (node,) = read_nodes(tmp_path / "nodes.csv")
    assert (node.name, node.gpus, node.gpu_model, node.cpu_milli) == ("n1", 2, "T4", 8000)
    a, b = read_jobs(tmp_path / "jobs.csv")
    assert (a.id, a.submit_time, a.task, a.work) == (
        "a",
        0.0,
        TaskRequest(2000, 1024, 1, 500),
        FixedDuration(20.0),
    )
    # b never ran; its stated runtime is its duration.
    assert (b.id, b.submit_time, b.work) == ("b", 3.0, FixedDuration(42.0))
    lines = (tmp_path / "placements.csv").read_text().splitlines()
    assert lines == ["job_id,pod,node,gpus,gpu_milli,start_s,end_s", "a,a,n1,1,500,5.0,25.0"]
