"""RAP profiles from the public data, DLRM jobs in traces, and mixed-trace generation.

* `load_profiles(dir)` reads `stage_capacity.csv` and `preprocessing_work.csv` (see the
  data's README) into `DlrmProfile`s for every plan, GPU count and batch. Plans without
  op data (2 and 3) are extrapolated from plan 0's work at the same GPU count and batch,
  replicated 2× and 4× (their feature counts), and flagged `extrapolated`.
* `read_jobs(path)` (format `dlrm`) reads a canonical trace whose `kind=dlrm` rows add
  `dlrm_plan` and `dlrm_batch`; those rows become `DlrmWork` jobs. Their canonical
  `work`/`throughput` give iterations and the ideal rate, so the same file still loads,
  as plain jobs at ideal speed, with the `canonical` format.
* `generate_mixed_jobs` makes a seeded trace of DLRM and ordinary jobs.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from policies import JobSpec, ModelThroughput, TaskRequest
from policies.dlrm import (
    DLRM_KIND,
    STAGES,
    DlrmProfile,
    DlrmWork,
    GpuStages,
    PreprocessingWork,
    replicate_profile,
)
from policies.rap_model import CoRunCosts, CoRunModel
from traces import canonical
from traces.csvio import Row, read_rows, write_rows
from traces.errors import TraceError
from traces.synthetic import SyntheticSpec, generate_jobs

STAGE_FILE = "stage_capacity.csv"
WORK_FILE = "preprocessing_work.csv"
EXTRAPOLATION_COPIES = {2: 2, 3: 4}
"""Plans with stage data only → how many copies of plan 0's features they carry."""
EXTRAPOLATION_SOURCE_PLAN = 0
DENSE_OPS = 26
"""13 dense columns × (fill_null, logit), replicated on every GPU (plans 0 and 1)."""
DLRM_COLUMNS = ("dlrm_plan", "dlrm_batch")

ProfileKey = tuple[int, int, int]
"""(plan, num_gpus, batch)."""


def default_data_dir() -> Path:
    """`$GPUFLEET_DATA_DIR/rap`, else `../shared/data/rap` beside the repository."""
    root = os.environ.get("GPUFLEET_DATA_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return (base / "rap").resolve()


# -- profiles -------------------------------------------------------------------------


def load_profiles(data_dir: str | Path | None = None) -> dict[ProfileKey, DlrmProfile]:
    """Every (plan, num_gpus, batch) the data covers, plus the extrapolated plans at the
    batches plan 0 has."""
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    stages = load_stage_profiles(directory / STAGE_FILE)
    work = load_preprocessing_work(directory / WORK_FILE)
    profiles: dict[ProfileKey, DlrmProfile] = {}
    for (plan, gpus, batch), per_gpu in sorted(work.items()):
        if (plan, gpus) not in stages:
            raise TraceError(directory / STAGE_FILE, f"no stages for plan {plan}, {gpus} GPUs")
        profiles[(plan, gpus, batch)] = DlrmProfile(plan, batch, stages[(plan, gpus)], per_gpu)
    for (plan, gpus), per_gpu_stages in sorted(stages.items()):
        copies = EXTRAPOLATION_COPIES.get(plan)
        if copies is None or any(k[:2] == (plan, gpus) for k in profiles):
            continue
        for key, source in list(profiles.items()):
            if key[:2] == (EXTRAPOLATION_SOURCE_PLAN, gpus):
                profiles[(plan, gpus, key[2])] = replicate_profile(
                    source, plan, per_gpu_stages, copies
                )
    return profiles


def load_stage_profiles(path: Path) -> dict[tuple[int, int], tuple[GpuStages, ...]]:
    """(plan, num_gpus) → one `GpuStages` per GPU index."""
    cells: dict[tuple[int, int], dict[int, dict[str, tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    columns = ("plan", "num_gpus", "gpu", "stage", "stage_ms", "capacity_ms")
    for row in read_rows(path, columns):
        stage = row.text("stage")
        if stage not in STAGES:
            raise row.error("stage", f"unknown stage {stage!r}; expected one of {STAGES}")
        key = (row.number("plan", int), row.number("num_gpus", int, minimum=1))
        gpu = _gpu_index(row, key[1])
        if stage in cells[key][gpu]:
            raise row.error("stage", f"stage {stage} repeated for GPU {gpu}")
        cells[key][gpu][stage] = (row.number("stage_ms", float), row.number("capacity_ms", float))
    return {key: _gpu_stages(path, key, per_gpu) for key, per_gpu in cells.items()}


def _gpu_stages(
    path: Path, key: tuple[int, int], per_gpu: Mapping[int, Mapping[str, tuple[float, float]]]
) -> tuple[GpuStages, ...]:
    plan, gpus = key
    result = []
    for gpu in range(gpus):
        values = per_gpu.get(gpu, {})
        if set(values) != set(STAGES):
            raise TraceError(path, f"plan {plan}, {gpus} GPUs, GPU {gpu}: needs all stages")
        try:
            result.append(
                GpuStages(tuple(values[s][0] for s in STAGES), tuple(values[s][1] for s in STAGES))
            )
        except ValueError as err:
            raise TraceError(path, f"plan {plan}, {gpus} GPUs, GPU {gpu}: {err}") from None
    return tuple(result)


def load_preprocessing_work(path: Path) -> dict[ProfileKey, tuple[PreprocessingWork, ...]]:
    """(plan, num_gpus, batch) → one `PreprocessingWork` per GPU index."""
    cells: dict[ProfileKey, dict[int, PreprocessingWork]] = defaultdict(dict)
    columns = ("plan", "num_gpus", "batch", "gpu", "num_ops", "unfused_ms", "fused_ms")
    for row in read_rows(path, columns):
        gpus = row.number("num_gpus", int, minimum=1)
        key = (row.number("plan", int), gpus, row.number("batch", int, minimum=1))
        gpu = _gpu_index(row, gpus)
        if gpu in cells[key]:
            raise row.error("gpu", f"GPU {gpu} repeated")
        cells[key][gpu] = _work(row)
    result = {}
    for key, per_gpu in cells.items():
        if set(per_gpu) != set(range(key[1])):
            raise TraceError(path, f"plan {key[0]}, {key[1]} GPUs, batch {key[2]}: GPUs missing")
        result[key] = tuple(per_gpu[g] for g in range(key[1]))
    return result


def _work(row: Row) -> PreprocessingWork:
    ops = row.number("num_ops", int, minimum=1)
    try:
        return PreprocessingWork(
            ops,
            row.number("unfused_ms", float),
            row.number("fused_ms", float),
            fused_kernel_count(ops),
        )
    except ValueError as err:
        raise row.error("num_ops", str(err)) from None


def fused_kernel_count(num_ops: int) -> int:
    """Kernels after the layer fusion of plans 0/1 (the data's README, Method 5): the 26
    dense ops fuse into 2 kernels (fill_null, logit); 3-op sparse chains (fill_null,
    sigrid_hash, firstx) into 3; the bucketize chain (fill_null, bucketize), 2 ops, into
    2 more on the GPU that owns it. So 5 kernels per GPU, 7 on the bucketize owner."""
    sparse = num_ops - DENSE_OPS
    if sparse < 0 or sparse % 3 not in (0, 2):
        raise ValueError(f"{num_ops} ops do not match the plan 0/1 op structure")
    chains = 3 if sparse >= 3 else 0
    bucketize = 2 if sparse % 3 == 2 else 0
    return 2 + chains + bucketize


def _gpu_index(row: Row, gpus: int) -> int:
    gpu = row.number("gpu", int)
    if gpu >= gpus:
        raise row.error("gpu", f"GPU {gpu} out of range for {gpus} GPUs")
    return gpu


# -- DLRM jobs in traces ---------------------------------------------------------------


def dlrm_job(
    job_id: str,
    submit_time: float,
    profile: DlrmProfile,
    iterations: float,
    model: CoRunModel | None = None,
    cpu_per_gpu_milli: int = 8000,
    mem_per_gpu_mib: int = 32768,
) -> JobSpec:
    """A DLRM job on `profile.num_gpus` whole GPUs of the profile's model, one node."""
    gpus = profile.num_gpus
    return JobSpec(
        id=job_id,
        submit_time=submit_time,
        task=TaskRequest(gpus * cpu_per_gpu_milli, gpus * mem_per_gpu_mib, gpus, 1000),
        work=DlrmWork(iterations, profile, model or CoRunModel()),
        allowed_models=frozenset({profile.gpu_model}),
        kind=DLRM_KIND,
    )


def read_jobs(
    path: str | Path, data_dir: str | Path | None = None, costs: CoRunCosts | None = None
) -> Iterator[JobSpec]:
    """A canonical trace in which `kind=dlrm` rows name a profile by `dlrm_plan` and
    `dlrm_batch`; their `work` is the iteration count."""
    dlrm_rows = _dlrm_rows(Path(path))
    profiles = load_profiles(data_dir) if dlrm_rows else {}
    model = CoRunModel(costs or CoRunCosts())
    for job in canonical.read_jobs(path):
        where = dlrm_rows.get(job.id)
        if where is None:
            yield job
            continue
        line, plan, batch = where
        profile = profiles.get((plan, job.task.num_gpus, batch))
        if profile is None:
            raise TraceError(path, f"no RAP profile for plan {plan}, batch {batch}", line)
        if job.replicas != 1:
            raise TraceError(path, "a DLRM job is one task on all its GPUs", line, "replicas")
        if not isinstance(job.work, ModelThroughput):
            raise TraceError(path, "a DLRM job gives its iterations as `work`", line, "work")
        yield replace(job, work=DlrmWork(job.work.work, profile, model))


def _dlrm_rows(path: Path) -> dict[str, tuple[int, int, int]]:
    """job id → (line, plan, batch) for the trace's DLRM rows."""
    rows = {}
    for row in read_rows(path, ("id", "kind")):
        if row.text("kind", "") != DLRM_KIND:
            continue
        rows[row.text("id")] = (
            row.line,
            row.number("dlrm_plan", int),
            row.number("dlrm_batch", int, minimum=1),
        )
    return rows


def write_jobs(jobs: Iterable[JobSpec], path: str | Path) -> int:
    """Write a mixed trace: canonical columns plus `dlrm_plan`, `dlrm_batch`. A DLRM
    row's throughput is its ideal rate, so canonical readers get a plain job."""
    columns = (*canonical.JOB_COLUMNS, *DLRM_COLUMNS)
    return write_rows(path, columns, (_row(job) for job in jobs))


def _row(job: JobSpec) -> dict[str, object]:
    work = job.work
    if not isinstance(work, DlrmWork):
        return canonical.job_row(job)
    profile = work.profile
    ideal = ModelThroughput(work.iterations, {profile.gpu_model: work.ideal_rate()})
    return {
        **canonical.job_row(replace(job, work=ideal)),
        "dlrm_plan": profile.plan,
        "dlrm_batch": profile.batch,
    }


# -- mixed traces -------------------------------------------------------------------------


@dataclass(frozen=True)
class MixedTraceSpec:
    """A seeded mix of DLRM jobs and ordinary jobs (traces.synthetic's mixture)."""

    num_jobs: int = 200
    jobs_per_hour: float = 6.0
    dlrm_fraction: float = field(default=0.3, metadata={"help": "share of jobs that are DLRM"})
    plans: tuple[int, ...] = (0, 1, 2, 3)
    batches: tuple[int, ...] = (4096, 8192)
    gpu_counts: tuple[int, ...] = (2, 4, 8)
    sharing_fraction: float = field(
        default=0.5, metadata={"help": "share of 1-GPU ordinary jobs asking for a fraction"}
    )
    gpu_model: str = "A100"

    def __post_init__(self) -> None:
        if self.num_jobs < 1 or self.jobs_per_hour <= 0:
            raise ValueError("need at least one job and a positive arrival rate")
        if not 0 <= self.dlrm_fraction <= 1 or not 0 <= self.sharing_fraction <= 1:
            raise ValueError("fractions must lie in [0, 1]")


def generate_mixed_jobs(
    spec: MixedTraceSpec,
    profiles: Mapping[ProfileKey, DlrmProfile],
    seed: int = 0,
    model: CoRunModel | None = None,
) -> list[JobSpec]:
    """DLRM jobs with uniformly drawn (plan, GPUs, batch) among the available profiles,
    their ideal run time from the synthetic duration mixture; the rest ordinary jobs of
    `traces.synthetic` on the same GPU model; both streams Poisson; sorted by submit."""
    rng = np.random.default_rng(seed)
    num_dlrm = int(rng.binomial(spec.num_jobs, spec.dlrm_fraction))
    choices = [
        key
        for key in sorted(profiles)
        if key[0] in spec.plans and key[1] in spec.gpu_counts and key[2] in spec.batches
    ]
    if num_dlrm and not choices:
        raise ValueError("no RAP profile matches the requested plans, GPU counts and batches")
    dlrm = _dlrm_jobs(spec, [profiles[k] for k in choices], num_dlrm, rng, model)
    others: list[JobSpec] = []
    if spec.num_jobs > num_dlrm:
        synthetic = SyntheticSpec(
            num_jobs=spec.num_jobs - num_dlrm,
            jobs_per_hour=spec.jobs_per_hour * (1 - spec.dlrm_fraction),
            sharing_fraction=spec.sharing_fraction,
            relative_speed=((spec.gpu_model, 1.0),),
        )
        others = generate_jobs(synthetic, seed=int(rng.integers(2**31)))
    return sorted([*dlrm, *others], key=lambda j: (j.submit_time, j.id))


def _dlrm_jobs(
    spec: MixedTraceSpec,
    profiles: list[DlrmProfile],
    count: int,
    rng: np.random.Generator,
    model: CoRunModel | None,
) -> list[JobSpec]:
    if not count:
        return []
    gaps = rng.exponential(3600.0 / (spec.jobs_per_hour * spec.dlrm_fraction), size=count)
    submits = np.cumsum(gaps) - gaps[0]
    long_job = rng.random(count) >= 0.8
    exponent = np.where(long_job, rng.uniform(3, 4, count), rng.uniform(1.5, 3, count))
    seconds = 60.0 * 10.0**exponent
    picks = rng.integers(len(profiles), size=count)
    jobs = []
    for i in range(count):
        profile = replace(profiles[int(picks[i])], gpu_model=spec.gpu_model)
        iterations = round(float(seconds[i]) * 1000.0 / profile.train_ms)
        jobs.append(
            dlrm_job(f"dlrm-{i:05d}", round(float(submits[i]), 3), profile, iterations, model)
        )
    return jobs


# -- `gpufleet traces generate --kind dlrm-mix` ----------------------------------------------


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dlrm-mix")
    group.add_argument(
        "--dlrm-fraction",
        type=float,
        default=MixedTraceSpec.dlrm_fraction,
        help="dlrm-mix: share of jobs that are DLRM (default: %(default)s)",
    )
    group.add_argument(
        "--rap-data",
        metavar="DIR",
        help="dlrm-mix: RAP profile directory (default: $GPUFLEET_DATA_DIR/rap)",
    )


def generate_command(args: argparse.Namespace) -> int:
    """Write a seeded mixed trace for the `dlrm` format."""
    spec = MixedTraceSpec(
        num_jobs=args.jobs,
        jobs_per_hour=args.rate,
        dlrm_fraction=args.dlrm_fraction,
        sharing_fraction=args.sharing,
    )
    jobs = generate_mixed_jobs(spec, load_profiles(args.rap_data), args.seed)
    count = write_jobs(jobs, args.out)
    print(f"wrote {count} jobs to {args.out} (read it with --format dlrm)")
    return 0
