"""Gavel's throughput file and job generator: its own workload family.

`simulation_throughputs.json` maps worker type → `"('<model>', scale_factor)"` → partner
(or `"null"` when running alone) → steps/s. Only isolated (`null`) throughputs are used
(gpufleet does not model Gavel's space sharing). Keys are parsed with `ast.literal_eval`.

`job_stream` is Gavel's `utils.generate_job` with its simulator's random streams, draw
for draw, so a seed gives Gavel's own trace job for job: a scale factor of 1/2/4/8 with
probability 0.7/0.1/0.15/0.05 (drawn, then set to 1, for single-GPU traces), a duration
on a V100 of 60·10^U(1.5, 3) s with probability 0.8 else 60·10^U(3, 4) s, a job type
drawn uniformly from Gavel's `JobTable` (again until it can run distributed when the
scale factor exceeds 1), steps = duration × V100 throughput, priority weight 5 for 20%
of jobs when asked, and Poisson arrivals from the first job at t=0.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from policies import JobSpec, TaskRequest
from policies.perf_models import PlacementThroughput
from traces.errors import TraceError

UNCONSOLIDATED = "_unconsolidated"
REFERENCE_MODEL = "v100"
DISTRIBUTED_FAMILIES = ("ResNet-18", "ResNet-50", "Transformer", "LM")
JOB_TABLE = (
    *(f"ResNet-18 (batch size {b})" for b in (16, 32, 64, 128, 256)),
    *(f"ResNet-50 (batch size {b})" for b in (16, 32, 64, 128)),
    *(f"Transformer (batch size {b})" for b in (16, 32, 64, 128, 256)),
    *(f"LM (batch size {b})" for b in (5, 10, 20, 40, 80)),
    *(f"Recommendation (batch size {b})" for b in (512, 1024, 2048, 4096, 8192)),
    "A3C",
    "CycleGAN",
)
"""Gavel's `job_table.JobTable` in its order, from which the generator draws job types."""


@dataclass(frozen=True)
class GavelThroughputs:
    """Isolated steps/s by (job type, scale factor) and worker type."""

    consolidated: Mapping[tuple[str, int], Mapping[str, float]]
    unconsolidated: Mapping[tuple[str, int], Mapping[str, float]]

    @property
    def job_types(self) -> list[str]:
        return sorted({name for name, _ in self.consolidated})

    def distributed(self, job_type: str) -> bool:
        return job_type.startswith(DISTRIBUTED_FAMILIES)


def read_throughputs(path: str | Path) -> GavelThroughputs:
    path = Path(path)
    if not path.is_file():
        raise TraceError(path, "no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TraceError(path, f"not a JSON file ({err})") from None
    if not isinstance(raw, dict) or not raw:
        raise TraceError(path, "expected an object of worker types")
    consolidated: dict[tuple[str, int], dict[str, float]] = {}
    unconsolidated: dict[tuple[str, int], dict[str, float]] = {}
    for worker, jobs in raw.items():
        target = unconsolidated if worker.endswith(UNCONSOLIDATED) else consolidated
        model = worker.removesuffix(UNCONSOLIDATED)
        if not isinstance(jobs, dict):
            raise TraceError(path, f"worker type {worker!r}: expected an object of job keys")
        for key, partners in jobs.items():
            job_key = _job_key(path, key)
            alone = partners.get("null") if isinstance(partners, dict) else None
            if not isinstance(alone, int | float) or alone < 0:
                raise TraceError(path, f"{worker} {key}: missing or negative 'null' throughput")
            target.setdefault(job_key, {})[model] = float(alone)
    if not consolidated:
        raise TraceError(path, "no consolidated worker types")
    return GavelThroughputs(consolidated, unconsolidated)


def _job_key(path: Path, key: str) -> tuple[str, int]:
    try:
        value = ast.literal_eval(key)
    except (ValueError, SyntaxError):
        value = None
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], int)
    ):
        raise TraceError(path, f"job key {key!r} is not a ('<model>', scale_factor) tuple")
    return value[0], value[1]


def generate_jobs(
    throughputs: GavelThroughputs,
    num_jobs: int,
    jobs_per_hour: float,
    seed: int = 0,
    multi_gpu: bool = True,
    multi_priority: bool = False,
) -> list[JobSpec]:
    """The first `num_jobs` jobs of `job_stream`."""
    if num_jobs < 1:
        raise ValueError("need at least one job")
    stream = job_stream(throughputs, jobs_per_hour, seed, multi_gpu, multi_priority)
    return list(itertools.islice(stream, num_jobs))


def job_stream(
    throughputs: GavelThroughputs,
    jobs_per_hour: float,
    seed: int = 0,
    multi_gpu: bool = True,
    multi_priority: bool = False,
) -> Iterator[JobSpec]:
    """Gavel's continuous trace, draw for draw: job `gavel-<i>` is Gavel's job i for the
    same seed and rate (parameters from `random.Random(seed + 2)`, gaps from
    `random.Random(seed + 3)`, as `Scheduler._initialize_seeds`; the first job at t=0)."""
    if jobs_per_hour <= 0:
        raise ValueError("need a positive arrival rate")
    params, gaps = random.Random(seed + 2), random.Random(seed + 3)
    types = [name for name in JOB_TABLE if (name, 1) in throughputs.consolidated]
    types += [name for name in throughputs.job_types if name not in JOB_TABLE]
    mean_gap = 3600.0 / jobs_per_hour
    submit = 0.0
    for index in itertools.count():
        drawn = _draw(params, types, throughputs, multi_gpu)
        high_priority = multi_priority and params.uniform(0, 1) <= 0.2
        yield _job(throughputs, index, submit, drawn, high_priority)
        submit += -math.log(1.0 - gaps.random()) * mean_gap


def _draw(
    rng: random.Random, types: list[str], throughputs: GavelThroughputs, multi_gpu: bool
) -> tuple[str, int, float]:
    """(job type, scale factor, seconds on a V100) in the order `utils.generate_job` draws."""
    scale = _scale_factor(rng.uniform(0, 1))  # drawn even for single-GPU traces
    if rng.random() >= 0.8:
        duration = 60.0 * 10 ** rng.uniform(3, 4)
    else:
        duration = 60.0 * 10 ** rng.uniform(1.5, 3)
    if not multi_gpu:
        scale = 1
    while True:
        job_type = rng.choice(types)
        if scale == 1 or (
            throughputs.distributed(job_type) and (job_type, scale) in throughputs.consolidated
        ):
            return job_type, scale, duration


def _scale_factor(draw: float) -> int:
    if draw < 0.7:
        return 1
    if draw <= 0.8:
        return 2
    return 4 if draw <= 0.95 else 8


def _job(
    throughputs: GavelThroughputs,
    index: int,
    submit: float,
    drawn: tuple[str, int, float],
    high_priority: bool,
) -> JobSpec:
    job_type, scale, duration = drawn
    key = (job_type, scale)
    if REFERENCE_MODEL not in throughputs.consolidated.get(key, {}):
        raise ValueError(f"no {REFERENCE_MODEL} throughput for {key}")
    rates = {m: r for m, r in throughputs.consolidated[key].items() if r > 0}
    return JobSpec(
        id=f"gavel-{index}",
        submit_time=submit,
        task=TaskRequest(num_gpus=1, gpu_milli=1000),
        work=PlacementThroughput(
            duration * throughputs.consolidated[key][REFERENCE_MODEL],
            rates,
            dict(throughputs.unconsolidated.get(key, {})),
        ),
        replicas=scale,
        allowed_models=frozenset(rates),
        kind="gavel",
        attributes={"job_type": job_type, "priority_weight": 5.0 if high_priority else 1.0},
    )
