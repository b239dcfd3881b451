"""Philly-style job lists: `timestamp,duration,num_gpus` (more columns are ignored).

`timestamp` is seconds or `YYYY-MM-DD HH:MM:SS`; submit times are made relative to the
earliest one. Jobs wider than one node become gang jobs of equal tasks: the task size is
the largest of 8, 4, 2, 1 GPUs that divides the request (12 GPUs → 3 × 4).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from policies import FixedDuration, JobSpec, TaskRequest
from traces.csvio import Row, read_rows

GPUS_PER_NODE = 8
COLUMNS = ("timestamp", "duration", "num_gpus")
"""The columns a Philly-style job list needs."""


def read_jobs(path: str | Path) -> list[JobSpec]:
    raw: list[tuple[float, float, int, int]] = []
    for row in read_rows(path, COLUMNS):
        duration = row.number("duration", float)
        if duration <= 0:
            raise row.error("duration", "must be positive")
        gpus = row.number("num_gpus", int, minimum=1)
        raw.append((_timestamp(row), duration, gpus, row.line))
    if not raw:
        return []
    start = min(t for t, *_ in raw)
    raw.sort(key=lambda r: (r[0], r[3]))
    return [_job(f"philly-{line}", t - start, duration, gpus) for t, duration, gpus, line in raw]


def _job(job_id: str, submit: float, duration: float, gpus: int) -> JobSpec:
    per_task = gpus if gpus <= GPUS_PER_NODE else _task_width(gpus)
    return JobSpec(
        id=job_id,
        submit_time=submit,
        task=TaskRequest(num_gpus=per_task, gpu_milli=1000),
        work=FixedDuration(duration),
        replicas=gpus // per_task,
    )


def _task_width(gpus: int) -> int:
    return next(w for w in (8, 4, 2, 1) if gpus % w == 0)


def _timestamp(row: Row) -> float:
    text = row.text("timestamp")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise row.error(
            "timestamp", f"{text!r} is neither seconds nor YYYY-MM-DD HH:MM:SS"
        ) from None
