"""Shared fixtures: small hand-built clusters and the public data directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from policies import ClusterState, FixedDuration, JobSpec, NodeSpec, TaskRequest, registry
from policies.continual import AccuracyCurve
from simulator.metrics import JOB_COLUMNS, Recorder

# Hypothesis' default 200 ms deadline per example is a timing assertion, and on a shared
# 2-core machine it fails correct code; speed is measured in benchmarks/, not here.
settings.register_profile("gpufleet", deadline=None)
settings.load_profile("gpufleet")

DATA_DIR = Path(
    os.environ.get("GPUFLEET_DATA_DIR", Path(__file__).parents[1] / ".." / "shared" / "data")
)


def shared_data(relative: str) -> Path:
    """A file under ../shared/data, or skip the test naming the missing path."""
    path = (DATA_DIR / relative).resolve()
    if not path.exists():
        pytest.skip(f"public data not found at {path} (set GPUFLEET_DATA_DIR)")
    return path


@pytest.fixture(autouse=True)
def _policy_registry() -> Iterator[None]:
    """Each test leaves the global policy registry as it found it: a policy class a test
    defines with a `name` registers itself, and would clash with itself on a second run
    in the same process. (Test policies at module level set `name` after the class body,
    so they never register.)"""
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def job_rows(recorder: Recorder) -> dict[str, dict[str, Any]]:
    """A run's per-job records by job id, each keyed by its `JOB_COLUMNS` names."""
    rows = [dict(zip(JOB_COLUMNS, row, strict=True)) for row in recorder.jobs]
    return {str(row["job_id"]): row for row in rows}


def node(
    name: str, gpus: int = 8, model: str = "V100", cpu: int = 64_000, mem: int = 256_000
) -> NodeSpec:
    return NodeSpec(
        name=name, cpu_milli=cpu, mem_mib=mem, gpus=gpus, gpu_model=model if gpus else ""
    )


def job(
    job_id: str,
    gpus: int = 1,
    milli: int = 1000,
    cpu: int = 1000,
    mem: int = 1000,
    submit: float = 0.0,
    duration: float = 100.0,
    replicas: int = 1,
    **kwargs: object,
) -> JobSpec:
    return JobSpec(
        id=job_id,
        submit_time=submit,
        task=TaskRequest(cpu_milli=cpu, mem_mib=mem, num_gpus=gpus, gpu_milli=milli if gpus else 0),
        work=FixedDuration(duration),
        replicas=replicas,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def two_nodes() -> ClusterState:
    return ClusterState([node("n0", gpus=4), node("n1", gpus=4)])


def accuracy_json(curve: AccuracyCurve, initial: float) -> dict[str, float]:
    """A ContinualTrainingJob's `spec.accuracy` for `curve`, starting at `initial`."""
    return {
        "ceiling": curve.ceiling,
        "floor": curve.floor,
        "decayPerHour": curve.decay_per_h,
        "halfGainGpuSeconds": curve.half_gain_gpu_s,
        "initial": initial,
    }


def ctj_metadata(name: str, created: str, namespace: str = "ns") -> dict[str, Any]:
    """A ContinualTrainingJob's metadata as the API serves it (`created`: RFC 3339)."""
    return {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "generation": 1,
        "creationTimestamp": created,
    }
