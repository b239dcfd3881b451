"""Sia's workloads and per-application profiles (the `sia-simulator` artifact layout).

Workload files: `name,time,application,num_replicas,batch_size[,category]`, where
`num_replicas` and `batch_size` are the TunedJobs configuration. Profiles live in
`<traces>/<application>/` as `placements-<suffix>.csv`, `scalability-<suffix>.csv` and
`validation-<batch>.csv`; by default `<traces>` is the `traces` folder beside the
workloads folder, as in the artifact (`sia/workloads/saturn/x.csv` → `sia/traces`).

GPU models are named as gpufleet's clusters name them; `PROFILE_SUFFIX` maps them to the
artifact's file suffixes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from policies import Elasticity, JobSpec, TaskRequest
from policies.elastic import ADAPTIVE, MODES, AdaptiveTraining
from policies.perf_models import AppProfile, EpochTable, StepRow, StepTable
from traces.csvio import Row, read_rows
from traces.errors import TraceError

PROFILE_SUFFIX: Mapping[str, str] = {
    "t4": "aws",
    "v100": "azure",
    "a100": "dgx-ext",
    "rtx6000": "quad",
    "rtx2080ti": "rtx",
}
"""gpufleet GPU model → profile file suffix (aws = g4dn T4, azure = ND40rs V100,
dgx-ext = DGX A100 with extended batch sizes, quad = Quadro RTX 6000, rtx = 2080Ti)."""

RESTART_DELAY_S: Mapping[str, float] = {
    "cifar10": 50.0,
    "deepspeech2": 25.0,
    "bert": 120.0,
    "yolov3": 80.0,
    "imagenet": 250.0,
    "ncf": 15.0,
}
"""Checkpoint-restore delay the Sia simulator charges on every (re)start; others 30 s."""

RESTART_PENALTY_S: Mapping[str, float] = {
    "cifar10": 30.0,
    "deepspeech2": 25.0,
    "bert": 120.0,
    "yolov3": 45.0,
    "imagenet": 250.0,
}
"""Restart cost Sia's policy assumes (measured on the physical cluster); others 30 s."""

SLOWDOWN: Mapping[str, float] = {
    "cifar10": 1.8,
    "imagenet": 1.2,
    "yolov3": 1.2,
    "bert": 1.2,
    "deepspeech2": 1.2,
    "ncf": 1.5,
}
"""Sia's calibration: real runs were this much slower than the profiles."""

MAX_LOCAL_OVERRIDE: Mapping[tuple[str, str], int] = {("deepspeech2", "rtx2080ti"): 57}
"""The artifact caps DeepSpeech2's per-GPU batch on 2080Ti below the profiled 80."""

DEFAULT_RESTART_S = 30.0
UNSUPPORTED = {"gpt_pmp": "pipeline-parallel jobs (gpt_pmp) are not modelled"}
WORKLOAD_COLUMNS = ("name", "time", "application", "num_replicas", "batch_size")


def read_jobs(
    path: str | Path,
    profiles: str | Path | None = None,
    mode: str | None = None,
    gpu_models: tuple[str, ...] | None = None,
) -> list[JobSpec]:
    """Jobs of one workload file. `mode` overrides every job's category (e.g. `rigid` to
    run TunedJobs as submitted); otherwise the optional `category` column decides and
    jobs without one are adaptive. `gpu_models` limits the profiles loaded (default: all
    models in `PROFILE_SUFFIX` that the application was profiled on)."""
    path = Path(path)
    if mode is not None and mode not in MODES:
        raise TraceError(path, f"job mode {mode!r} is not one of {', '.join(MODES)}")
    root = Path(profiles) if profiles is not None else default_profiles_dir(path)
    models = gpu_models or tuple(PROFILE_SUFFIX)
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for row in read_rows(path, WORKLOAD_COLUMNS):
        name = row.text("name")
        if name in seen:
            raise row.error("name", f"duplicate job name {name!r}")
        seen.add(name)
        app = row.text("application")
        if app in UNSUPPORTED:
            raise row.error("application", UNSUPPORTED[app])
        try:
            profile = load_profile(root, app, models)
        except TraceError as err:
            raise row.error("application", f"no usable profile for {app!r}: {err}") from None
        replicas = row.number("num_replicas", int, minimum=1)
        batch = row.number("batch_size", int, minimum=1)
        category = mode or row.text("category", ADAPTIVE)
        if category not in MODES:
            raise row.error("category", f"{category!r} is not one of {', '.join(MODES)}")
        jobs.append(_job(name, row.number("time", float), profile, replicas, batch, category))
    if not jobs:
        raise TraceError(path, "workload has no jobs")
    return jobs


def _job(
    name: str, submit: float, profile: AppProfile, replicas: int, batch: int, mode: str
) -> JobSpec:
    return JobSpec(
        id=name,
        submit_time=submit,
        task=TaskRequest(num_gpus=1, gpu_milli=1000),
        work=AdaptiveTraining(profile, replicas, batch, mode),
        replicas=replicas,
        allowed_models=frozenset(profile.tables),
        restart_cost_s=profile.restart_delay_s,
        kind="training",
        elastic=None if mode == "rigid" else Elasticity(1, 64),
        attributes={
            "application": profile.name,
            "category": mode,
            "restart_penalty_s": RESTART_PENALTY_S.get(profile.name, DEFAULT_RESTART_S),
        },
    )


def default_profiles_dir(workload: Path) -> Path:
    return workload.resolve().parent.parent.parent / "traces"


def load_profile(root: str | Path, app: str, gpu_models: tuple[str, ...]) -> AppProfile:
    """One application's profile on the given GPU models (those it was profiled on)."""
    return _load_profile(Path(root).resolve(), app, tuple(sorted(gpu_models)))


@functools.lru_cache(maxsize=64)
def _load_profile(root: Path, app: str, gpu_models: tuple[str, ...]) -> AppProfile:
    folder = root / app
    if not folder.is_dir():
        raise TraceError(folder, "no such profile folder")
    tables: dict[str, StepTable] = {}
    for model in gpu_models:
        suffix = PROFILE_SUFFIX.get(model)
        if suffix is None:
            raise TraceError(folder, f"no profile suffix known for GPU model {model!r}")
        placements = folder / f"placements-{suffix}.csv"
        if placements.is_file():
            scaling = folder / f"scalability-{suffix}.csv"
            tables[model] = StepTable(model, read_placements(placements), read_scalability(scaling))
    if not tables:
        raise TraceError(folder, f"no placements file for any of {', '.join(gpu_models)}")
    return AppProfile(
        name=app,
        epochs=read_validation(folder),
        tables=tables,
        restart_delay_s=RESTART_DELAY_S.get(app, DEFAULT_RESTART_S),
        slowdown=SLOWDOWN.get(app, 1.0),
        max_local_override={
            model: limit for (name, model), limit in MAX_LOCAL_OVERRIDE.items() if name == app
        },
    )


def read_placements(path: Path) -> list[StepRow]:
    rows = []
    for row in read_rows(path, ("placement", "local_bsz", "step_time", "sync_time")):
        digits = row.text("placement")
        if not digits.isdigit():
            raise row.error("placement", f"{digits!r} is not a string of per-node GPU counts")
        rows.append(
            StepRow(
                tuple(int(d) for d in digits),
                row.number("local_bsz", int, minimum=1),
                _positive(row, "step_time"),
                row.number("sync_time", float),
            )
        )
    if not rows:
        raise TraceError(path, "no rows")
    return rows


def read_scalability(path: Path) -> list[StepRow]:
    if not path.is_file():
        return []
    rows = []
    columns = ("num_nodes", "num_replicas", "local_bsz", "step_time", "sync_time")
    for row in read_rows(path, columns):
        nodes = row.number("num_nodes", int, minimum=1)
        replicas = row.number("num_replicas", int, minimum=1)
        if replicas < nodes:
            raise row.error("num_replicas", "fewer GPUs than nodes")
        # Only the node and GPU counts matter here; spread the GPUs evenly.
        per_node, extra = divmod(replicas, nodes)
        placement = tuple(per_node + (1 if i < extra else 0) for i in range(nodes))
        rows.append(
            StepRow(
                placement,
                row.number("local_bsz", int, minimum=1),
                _positive(row, "step_time"),
                row.number("sync_time", float),
            )
        )
    return rows


def read_validation(folder: Path) -> EpochTable:
    files = sorted(
        (int(p.stem.split("-", 1)[1]), p)
        for p in folder.glob("validation-*.csv")
        if p.stem.split("-", 1)[1].isdigit()
    )
    if not files:
        raise TraceError(folder, "no validation-<batch>.csv files")
    curves = []
    for _, path in files:
        rows = list(read_rows(path, ("progress", "grad_sqr", "grad_var")))
        if not rows:
            raise TraceError(path, "no epochs")
        curves.append(
            [
                (
                    r.number("progress", float),
                    r.number("grad_sqr", float),
                    r.number("grad_var", float),
                )
                for r in rows
            ]
        )
    epochs = min(len(c) for c in curves)
    table = np.array([c[:epochs] for c in curves], dtype=float)
    return EpochTable(
        batch_sizes=tuple(b for b, _ in files),
        progress=table[:, :, 0],
        grad_sqr=table[:, :, 1],
        grad_var=table[:, :, 2],
    )


def _positive(row: Row, field: str) -> float:
    value = row.number(field, float)
    if value <= 0:
        raise row.error(field, "must be positive")
    return value
