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
| `node` | optional: pins the job to this node as an *occupant* (see below) |
| `gpus` | optional, with `node`: `|`-separated GPU indices the occupant holds |

An occupant is a pod the policy never placed (another scheduler's, or one already running
when `controller record` began). It has one task and a `duration_s`; the host puts it on
`node` at `submit_s` and releases it `duration_s` later, and policies see only the
capacity it holds. It takes `gpus` if they are free, else the GPUs the controller counts
for a pod whose GPUs nobody recorded (`policies.placement.select_gpus` on that node), else
CPU and memory only. The two columns are written only when a trace has occupants.

Clusters (`NODE_COLUMNS`): `name,cpu_milli,mem_mib,gpus,gpu_model,rack`. `gpu_model` is
the GPU as the node reports it: a model (`A100`) or a product (`NVIDIA-A100-SXM4-40GB`,
which policies know as model `A100`; policies/gpu_models.py). An optional
`shares_gpus` column (`true`/`false`, default true) says whether tasks may share the
node's GPUs (`NodeSpec.shares_gpus`; a live run with `--backend=whole` records false);
it is written only when some node does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
REQUIRED_JOB_COLUMNS = ("id", "submit_s", "num_gpus")
"""The job columns a file must have; the others default."""
PIN_COLUMNS = ("node", "gpus")
NODE_COLUMNS = ("name", "cpu_milli", "mem_mib", "gpus", "gpu_model", "rack")
SHARING_COLUMN = "shares_gpus"
PIN_KEY = "pin"
"""`JobSpec.attributes[PIN_KEY]` holds an occupant's `Pin`."""


@dataclass(frozen=True, slots=True)
class Pin:
    """Where an occupant sits: its node and, when recorded, the GPU indices it holds."""

    node: str
    gpus: tuple[int, ...] | None = None


def pin_of(job: JobSpec) -> Pin | None:
    pin = job.attributes.get(PIN_KEY)
    return pin if isinstance(pin, Pin) else None


def read_jobs(path: str | Path) -> Iterator[JobSpec]:
    seen: set[str] = set()
    for row in read_rows(path, REQUIRED_JOB_COLUMNS):
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
    pin = _pin(row, task)
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
        attributes={PIN_KEY: pin} if pin else {},
    )


def _pin(row: Row, task: TaskRequest) -> Pin | None:
    node = row.text("node", "")
    raw = row.text("gpus", "")
    if not node:
        if raw:
            raise row.error("gpus", "GPU indices need a node")
        return None
    if row.number("replicas", int, 1) != 1:
        raise row.error("replicas", "an occupant (a row with a node) has one task")
    if not row.text("duration_s", ""):
        raise row.error("duration_s", "an occupant (a row with a node) needs a duration")
    if not raw:
        return Pin(node)
    parts = raw.split("|")
    if not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise row.error("gpus", f"expected |-separated GPU indices, got {raw!r}")
    gpus = tuple(int(p) for p in parts)
    if len(set(gpus)) != len(gpus) or len(gpus) != task.num_gpus:
        raise row.error("gpus", f"{raw!r} is not {task.num_gpus} distinct GPU indices")
    return Pin(node, gpus)


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
        **_pin_fields(job),
    }


def _pin_fields(job: JobSpec) -> dict[str, object]:
    pin = pin_of(job)
    if pin is None:
        return {}
    if job.replicas != 1 or not isinstance(job.work, FixedDuration):
        raise TraceError("<jobs>", f"job {job.id}: an occupant needs one task and a duration")
    return {"node": pin.node, "gpus": "|".join(map(str, pin.gpus or ()))}


def write_jobs(jobs: Iterable[JobSpec], path: str | Path) -> int:
    """Write jobs in the canonical schema (atomically); returns the row count. The
    occupant columns are added only when some job is pinned, so other files keep the
    columns older readers know."""
    jobs = list(jobs)
    pinned = any(pin_of(job) is not None for job in jobs)
    columns = JOB_COLUMNS + PIN_COLUMNS if pinned else JOB_COLUMNS
    return write_rows(path, columns, (job_row(job) for job in jobs))


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
                    shares_gpus=_flag(row, SHARING_COLUMN, True),
                )
            )
        except ValueError as err:
            raise row.error("gpu_model", str(err)) from None
    if not nodes:
        raise TraceError(path, "no nodes")
    return nodes


def write_nodes(nodes: Iterable[NodeSpec], path: str | Path) -> None:
    nodes = list(nodes)
    whole_only = not all(n.shares_gpus for n in nodes)
    columns: tuple[str, ...] = NODE_COLUMNS + ((SHARING_COLUMN,) if whole_only else ())
    fields = ((*_node_fields(n), str(n.shares_gpus).lower()) for n in nodes)
    write_rows(path, columns, (dict(zip(columns, f, strict=False)) for f in fields))


def _node_fields(n: NodeSpec) -> tuple[object, ...]:
    return (n.name, n.cpu_milli, n.mem_mib, n.gpus, n.product, n.rack)


# -- a trace directory ---------------------------------------------------------------------

JOBS_FILE = "jobs.csv"
NODES_FILE = "nodes.csv"
RECORDING_FILE = "recording.json"


def recording_end(directory: str | Path) -> float | None:
    """`ended_s` from the directory's `recording.json`; None when it has none."""
    path = Path(directory) / RECORDING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise TraceError(path, f"not JSON ({err})") from None
    value = data.get("ended_s") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(path, f"expected a number, got {value!r}", field="ended_s")
    if not math.isfinite(value) or value < 0:
        raise TraceError(path, f"{value!r} is not a time >= 0", field="ended_s")
    return float(value)


def recording_json(began_s: float, ended_s: float, origin_unix_s: float) -> str:
    return json.dumps(
        {"began_s": began_s, "ended_s": ended_s, "origin_unix_s": origin_unix_s}, indent=2
    )
