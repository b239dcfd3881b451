"""gpufleet's canonical on-disk schema for jobs and clusters (CSV, one row per record).

Jobs (`JOB_COLUMNS`):

| column | meaning |
|---|---|
| `id` | unique job id |
| `submit_s` | submit time, seconds from trace start |
| `kind` | `batch` unless a later job kind says otherwise |
| `replicas` | identical tasks; all placed together (gang) |
| `cpu_milli`, `mem_mib` | per task |
| `num_gpus`, `gpu_milli` | per task; `gpu_milli` per GPU (< 1000 only with one GPU) |
| `allowed_models` | `|`-separated GPU models, empty for any |
| `priority` | larger is more important |
| `restart_cost_s` | delay paid when the job restarts; empty for the run default |
| `duration_s` | fixed run time; or leave empty and give `work` and `throughput` |
| `work` | work units (e.g. iterations) |
| `throughput` | `MODEL=units_per_s;...` at the job's full request |
| `preemptible` | `false`: once running, no policy preempts or resizes it (default `true`) |

Clusters (`NODE_COLUMNS`): `name,cpu_milli,mem_mib,gpus,gpu_model,rack`. `gpu_model` is
the GPU as the node reports it: a model (`A100`) or a product (`NVIDIA-A100-SXM4-40GB`,
which policies know as model `A100`; policies/gpu_models.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from policies import FixedDuration, JobSpec, ModelThroughput, NodeSpec, TaskRequest
from policies.gpu_models import node_model
from traces.csvio import Row, read_rows, write_rows
from traces.errors import TraceError

JOB_COLUMNS = (
    "id",
    "submit_s",
    "kind",
    "replicas",
    "cpu_milli",
    "mem_mib",
    "num_gpus",
    "gpu_milli",
    "allowed_models",
    "priority",
    "restart_cost_s",
    "duration_s",
    "work",
    "throughput",
    "preemptible",
)
NODE_COLUMNS = ("name", "cpu_milli", "mem_mib", "gpus", "gpu_model", "rack")


def read_jobs(path: str | Path) -> Iterator[JobSpec]:
    seen: set[str] = set()
    for row in read_rows(path, ("id", "submit_s", "num_gpus")):
        job = _job_from_row(row)
        if job.id in seen:
            raise row.error("id", f"duplicate job id {job.id!r}")
        seen.add(job.id)
        yield job


def _job_from_row(row: Row) -> JobSpec:
    num_gpus = row.number("num_gpus", int)
    milli = row.number("gpu_milli", int, 1000 if num_gpus else 0)
    try:
        task = TaskRequest(
            cpu_milli=row.number("cpu_milli", int, 0),
            mem_mib=row.number("mem_mib", int, 0),
            num_gpus=num_gpus,
            gpu_milli=milli,
        )
    except ValueError as err:
        raise row.error("gpu_milli", str(err)) from None
    models = row.text("allowed_models", "")
    restart = row.values.get("restart_cost_s", "").strip()
    return JobSpec(
        id=row.text("id"),
        submit_time=row.number("submit_s", float),
        task=task,
        work=_work(row),
        replicas=row.number("replicas", int, 1, minimum=1),
        allowed_models=frozenset(models.split("|")) if models else None,
        priority=row.number("priority", int, 0, minimum=None),
        restart_cost_s=float(restart) if restart else 0.0,
        kind=row.text("kind", "batch"),
        preemptible=_flag(row, "preemptible", default=True),
    )


def _flag(row: Row, field: str, default: bool) -> bool:
    raw = row.text(field, "").lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise row.error(field, f"{raw!r} is not true or false")
    return raw == "true"


def _work(row: Row) -> FixedDuration | ModelThroughput:
    if (row.values.get("duration_s") or "").strip():
        seconds = row.number("duration_s", float)
        if seconds <= 0:
            raise row.error("duration_s", "must be positive")
        return FixedDuration(seconds)
    work = row.number("work", float)
    if work <= 0:
        raise row.error("work", "must be positive")
    table: dict[str, float] = {}
    for part in row.text("throughput").split(";"):
        model, sep, rate = part.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not sep or not model.strip() or value <= 0:
            raise row.error("throughput", f"expected MODEL=rate with rate > 0, got {part!r}")
        table[model.strip()] = value
    return ModelThroughput(work, table)


def job_row(job: JobSpec) -> dict[str, object]:
    work = job.work
    duration: object = ""
    units: object = ""
    rates = ""
    if isinstance(work, FixedDuration):
        duration = work.seconds
    elif isinstance(work, ModelThroughput):
        units = work.work
        rates = ";".join(f"{m}={r!r}" for m, r in sorted(work.throughput.items()))
    else:
        raise TraceError(
            "<jobs>", f"job {job.id}: work model {type(work).__name__} has no CSV form"
        )
    return {
        "id": job.id,
        "submit_s": job.submit_time,
        "kind": job.kind,
        "replicas": job.replicas,
        "cpu_milli": job.task.cpu_milli,
        "mem_mib": job.task.mem_mib,
        "num_gpus": job.task.num_gpus,
        "gpu_milli": job.task.gpu_milli,
        "allowed_models": "|".join(sorted(job.allowed_models or ())),
        "priority": job.priority,
        "restart_cost_s": job.restart_cost_s or "",
        "duration_s": duration,
        "work": units,
        "throughput": rates,
        "preemptible": "true" if job.preemptible else "false",
    }


def write_jobs(jobs: Iterable[JobSpec], path: str | Path) -> int:
    """Write jobs in the canonical schema (atomically); returns the row count."""
    return write_rows(path, JOB_COLUMNS, (job_row(job) for job in jobs))


def read_nodes(path: str | Path) -> list[NodeSpec]:
    nodes = []
    for row in read_rows(path, ("name", "cpu_milli", "gpus")):
        gpus = row.number("gpus", int)
        product = row.text("gpu_model", "") if gpus else ""
        try:
            nodes.append(
                NodeSpec(
                    name=row.text("name"),
                    cpu_milli=row.number("cpu_milli", int),
                    mem_mib=row.number("mem_mib", int, 0),
                    gpus=gpus,
                    gpu_model=node_model(product),
                    rack=row.text("rack", ""),
                    gpu_product=product,
                )
            )
        except ValueError as err:
            raise row.error("gpu_model", str(err)) from None
    if not nodes:
        raise TraceError(path, "no nodes")
    return nodes


def write_nodes(nodes: Iterable[NodeSpec], path: str | Path) -> None:
    rows = (dict(zip(NODE_COLUMNS, _node_fields(n), strict=True)) for n in nodes)
    write_rows(path, NODE_COLUMNS, rows)


def _node_fields(n: NodeSpec) -> tuple[object, ...]:
    return (n.name, n.cpu_milli, n.mem_mib, n.gpus, n.product, n.rack)
