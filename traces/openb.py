"""Alibaba cluster-trace-gpu-v2023 ("openb") pod and node lists.

Pods become single-task jobs: `gpu_milli` is per GPU, `gpu_spec` a `|`-list of allowed
models (repeats allowed). In replay mode a pod runs from `creation_time` for
`deletion_time − creation_time` seconds; the FGD inflation study ignores both times.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from policies import MILLI, FixedDuration, JobSpec, NodeSpec, TaskRequest
from traces.csvio import Row, read_rows
from traces.errors import TraceError

POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")


@dataclass(frozen=True, slots=True)
class OpenbPod:
    name: str
    task: TaskRequest
    allowed_models: frozenset[str] | None
    creation_s: float | None
    deletion_s: float | None


def read_pods(path: str | Path) -> Iterator[OpenbPod]:
    for row in read_rows(path, POD_COLUMNS):
        yield _pod(row)


def _pod(row: Row) -> OpenbPod:
    num_gpu = row.number("num_gpu", int)
    milli = row.number("gpu_milli", int) if num_gpu else 0
    if num_gpu and not 0 < milli <= MILLI:
        raise row.error("gpu_milli", f"{milli} is outside 1..1000 for a GPU pod")
    if num_gpu > 1 and milli != MILLI:
        raise row.error("gpu_milli", "a multi-GPU pod must take whole GPUs")
    spec = (row.values.get("gpu_spec") or "").strip()
    created = row.values.get("creation_time", "").strip()
    deleted = row.values.get("deletion_time", "").strip()
    return OpenbPod(
        name=row.text("name"),
        task=TaskRequest(
            cpu_milli=row.number("cpu_milli", int),
            mem_mib=row.number("memory_mib", int),
            num_gpus=num_gpu,
            gpu_milli=milli,
        ),
        allowed_models=frozenset(m for m in spec.split("|") if m) if spec else None,
        creation_s=row.number("creation_time", float) if created else None,
        deletion_s=row.number("deletion_time", float) if deleted else None,
    )


def read_jobs(path: str | Path) -> Iterator[JobSpec]:
    """Replay mode: each pod arrives at its creation time and departs at its deletion."""
    for pod in read_pods(path):
        if pod.creation_s is None or pod.deletion_s is None:
            raise TraceError(path, f"pod {pod.name} lacks creation/deletion times for replay")
        yield JobSpec(
            id=pod.name,
            submit_time=pod.creation_s,
            task=pod.task,
            work=FixedDuration(max(1.0, pod.deletion_s - pod.creation_s)),
            allowed_models=pod.allowed_models,
            kind="pod",
        )


def read_nodes(path: str | Path, gpu_only: bool = False) -> list[NodeSpec]:
    nodes = []
    for row in read_rows(path, NODE_COLUMNS):
        gpus = row.number("gpu", int)
        model = (row.values.get("model") or "").strip()
        if gpus and not model:
            raise row.error("model", "a GPU node needs a model")
        if gpu_only and not gpus:
            continue
        nodes.append(
            NodeSpec(
                name=row.text("sn"),
                cpu_milli=row.number("cpu_milli", int),
                mem_mib=row.number("memory_mib", int),
                gpus=gpus,
                gpu_model=model if gpus else "",
            )
        )
    if not nodes:
        raise TraceError(path, "no nodes")
    return nodes
