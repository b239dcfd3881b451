"""Gavel's throughput file and job generator: its own workload family.

`simulation_throughputs.json` maps worker type → `"('<model>', scale_factor)"` → partner
(or `"null"` when running alone) → steps/s. Only isolated (`null`) throughputs are used
(gpufleet does not model Gavel's space sharing). Keys are parsed with `ast.literal_eval`.

`generate_jobs` follows Gavel's `generate_job`: a scale factor of 1/2/4/8 with
probability 0.7/0.1/0.15/0.05, a job type drawn uniformly (again until it can run
distributed when the scale factor exceeds 1), a duration on a V100 of
60·10^U(1.5, 3) s with probability 0.8 else 60·10^U(3, 4) s, steps = duration × V100
throughput, priority weight 5 for 20% of jobs when asked, Poisson arrivals. Gavel draws
with Python's `random`; this uses numpy's generator, so traces match in distribution,
not job for job.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies import JobSpec, TaskRequest
from policies.perf_models import PlacementThroughput
from traces.errors import TraceError

UNCONSOLIDATED = "_unconsolidated"
REFERENCE_MODEL = "v100"
DISTRIBUTED_FAMILIES = ("ResNet-18", "ResNet-50", "Transformer", "LM")
SCALE_FACTORS = ((1, 0.7), (2, 0.1), (4, 0.15), (8, 0.05))


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
    if num_jobs < 1 or jobs_per_hour <= 0:
        raise ValueError("need at least one job and a positive arrival rate")
    rng = np.random.default_rng(seed)
    types = throughputs.job_types
    gaps = rng.exponential(3600.0 / jobs_per_hour, size=num_jobs)
    arrivals = np.cumsum(gaps) - gaps[0]
    jobs = []
    for index, submit in enumerate(arrivals):
        scale = _scale_factor(rng) if multi_gpu else 1
        job_type = _job_type(rng, types, throughputs, scale)
        key = (job_type, scale)
        if REFERENCE_MODEL not in throughputs.consolidated.get(key, {}):
            raise ValueError(f"no {REFERENCE_MODEL} throughput for {key}")
        steps = _duration(rng) * throughputs.consolidated[key][REFERENCE_MODEL]
        weight = 5.0 if multi_priority and rng.uniform() <= 0.2 else 1.0
        rates = {m: r for m, r in throughputs.consolidated[key].items() if r > 0}
        jobs.append(
            JobSpec(
                id=f"gavel-{index}",
                submit_time=float(submit),
                task=TaskRequest(num_gpus=1, gpu_milli=1000),
                work=PlacementThroughput(
                    steps, rates, dict(throughputs.unconsolidated.get(key, {}))
                ),
                replicas=scale,
                allowed_models=frozenset(rates),
                kind="gavel",
                attributes={"job_type": job_type, "priority_weight": weight},
            )
        )
    return jobs


def _scale_factor(rng: np.random.Generator) -> int:
    draw = rng.uniform()
    edge = 0.0
    for value, probability in SCALE_FACTORS:
        edge += probability
        if draw < edge:
            return value
    return SCALE_FACTORS[-1][0]


def _duration(rng: np.random.Generator) -> float:
    if rng.uniform() >= 0.8:
        return 60.0 * 10 ** rng.uniform(3, 4)
    return 60.0 * 10 ** rng.uniform(1.5, 3)


def _job_type(
    rng: np.random.Generator, types: list[str], throughputs: GavelThroughputs, scale: int
) -> str:
    while True:
        job_type = types[int(rng.integers(len(types)))]
        if scale == 1 or (
            throughputs.distributed(job_type) and (job_type, scale) in throughputs.consolidated
        ):
            return job_type
