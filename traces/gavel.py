"""Gavel's Philly-derived (duration, GPUs) distribution, `duration_s,num_gpus`.

The file has no arrival times. As Gavel's generator does, jobs are drawn from the rows
(uniformly, with replacement) and arrive as a Poisson process at `jobs_per_hour`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies import FixedDuration, JobSpec, TaskRequest
from traces.csvio import read_rows
from traces.errors import TraceError

COLUMNS = ("duration_s", "num_gpus")
"""The columns of a Gavel-style job-size distribution."""


def read_distribution(path: str | Path) -> list[tuple[float, int]]:
    rows = []
    for row in read_rows(path, COLUMNS):
        duration = row.number("duration_s", float)
        if duration <= 0:
            raise row.error("duration_s", "must be positive")
        rows.append((duration, row.number("num_gpus", int, minimum=1)))
    if not rows:
        raise TraceError(path, "no rows")
    return rows


def read_jobs(
    path: str | Path, num_jobs: int = 1000, jobs_per_hour: float = 60.0, seed: int = 0
) -> list[JobSpec]:
    table = read_distribution(path)
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(table), size=num_jobs)
    gaps = rng.exponential(3600.0 / jobs_per_hour, size=num_jobs)
    times = np.cumsum(gaps) - gaps[0]
    jobs = []
    for i, (pick, submit) in enumerate(zip(picks, times, strict=True)):
        duration, gpus = table[int(pick)]
        jobs.append(
            JobSpec(
                id=f"gavel-{i}",
                submit_time=float(submit),
                task=TaskRequest(num_gpus=gpus, gpu_milli=1000),
                work=FixedDuration(duration),
            )
        )
    return jobs
