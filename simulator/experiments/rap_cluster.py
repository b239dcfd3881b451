"""The cluster half of `gpufleet experiment rap`: a mixed DLRM/ordinary trace on A100s
under RAP's sharing settings, one run per (rate, host slowdown, setting, seed), each a
cell of the sweep runner; and `experiment: rap` in a sweep spec, the same cells over
the spec's traces, policies and seeds:

    experiment: rap
    traces:
      - name: low-load
        generate: {jobs: 300, rate: 0.7, dlrm_fraction: 0.3, host_slowdown: 0.0335}
    cluster: {gpus: 64}                          # A100s
    policies: [no_sharing, rap_own, cross_job]   # POLICIES, or rap with options
    seeds: 0-2

A generated trace reads RAP's profiles from `data:` (default `$GPUFLEET_DATA_DIR/rap`);
its cells are keyed by those files' bytes too.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from policies import AllocationShape, JobSpec, NodeSpec, make_policy
from policies.dlrm import DLRM_KIND, DlrmProfile, DlrmWork
from policies.rap import RapSharing
from policies.rap_model import CoRunCosts, CoRunModel
from simulator.metrics import JOB_COLUMNS
from simulator.run import RunConfig, simulate
from simulator.sweep.cells import Cell, CellOutput, Scalar, canonical_json, make_cell
from simulator.sweep.spec import SpecError, SweepExperiment, TraceSource, file_digest
from traces.rap import (
    STAGE_FILE,
    WORK_FILE,
    MixedTraceSpec,
    ProfileKey,
    default_data_dir,
    generate_mixed_jobs,
    load_profiles,
)
from traces.synthetic import homogeneous_cluster

CLUSTER_GPUS = 64
POLICIES: dict[str, dict[str, str]] = {
    "no_sharing": {"sharing": "none"},
    "rap_own": {"sharing": "own"},
    "cross_job": {"sharing": "cross_job", "offload": "gain"},
    "cross_job_always": {"sharing": "cross_job", "offload": "always"},
    "cross_job_no_rap": {"sharing": "cross_job", "fallback": "sequential"},
}
"""RAP's sharing settings by label. `cross_job_no_rap`: jobs that cannot co-run on their
own GPUs (sequential at home). Settings that place no remote part (`sharing` none or
own) do not depend on the host slowdown."""
CLUSTER_COLUMNS = (
    "rate_per_h",
    "host_slowdown",
    "policy",
    "seeds",
    "completed",
    "jobs_per_h",
    "gpu_util",
    "avg_jct_h",
    "avg_jct_dlrm_h",
    "avg_jct_other_h",
    "avg_queue_h",
    "dlrm_speed_vs_ideal",
    "other_speed_vs_ideal",
    "offloaded_dlrm",
)
METRICS = ("rate_per_h", "host_slowdown", *CLUSTER_COLUMNS[4:])
"""A cell's metrics: its trace's rate and host slowdown (empty for a setting it cannot
affect), then the run's figures."""
CELL_TASK = "simulator.experiments.rap_cluster:run_cell"


@dataclass(frozen=True)
class ClusterSetup:
    jobs: int
    seeds: int
    rates: tuple[float, ...]
    host_slowdowns: tuple[float, ...]
    dlrm_fraction: float

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.seeds < 1:
            raise ValueError("--jobs and --seeds must be at least 1")
        if not self.rates or min(self.rates) <= 0:
            raise ValueError("--rates must list positive arrival rates")
        if not self.host_slowdowns or not all(0 <= s < 1 for s in self.host_slowdowns):
            raise ValueError("--host-slowdowns must lie in [0, 1)")
        if not 0 < self.dlrm_fraction <= 1:
            raise ValueError("--dlrm-fraction must lie in (0, 1]")


@dataclass(frozen=True)
class MixedTrace:
    """A cell's trace before its seed: profiles, the mix, and the host slowdown a
    remote part charges (which the generated DLRM jobs carry in their co-run model)."""

    profiles: Mapping[ProfileKey, DlrmProfile]
    spec: MixedTraceSpec
    host_slowdown: float

    def jobs(self, seed: int) -> list[JobSpec]:
        model = CoRunModel(replace(CoRunCosts(), host_slowdown=self.host_slowdown))
        return generate_mixed_jobs(self.spec, self.profiles, seed=seed, model=model)


# -- one run ------------------------------------------------------------------------------


def run_cell(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """One run: the trace for the cell's seed under its RAP setting; metrics `METRICS`,
    payload the `cluster_runs.csv` row."""
    trace: MixedTrace = inputs["trace"]
    nodes: list[NodeSpec] = inputs["cluster"]
    seed, options = int(params["seed"]), dict(params["options"])
    policy = cast(RapSharing, make_policy("rap", options))
    jobs = trace.jobs(seed)
    config = RunConfig("dlrm-mix", "dlrm", str(params["cluster"]), "rap", options, seed)
    result = simulate(config, nodes, jobs, policy)
    hosts = trace.host_slowdown if policy.settings.sharing == "cross_job" else None
    ideal = {job.id: ideal_seconds(job) for job in jobs}
    rate = trace.spec.jobs_per_hour
    row = run_row(
        rate, hosts, str(params["policy"]), seed, result.summary, result.recorder.jobs, ideal
    )
    metrics: dict[str, Scalar] = {name: row[name] for name in METRICS}
    metrics["host_slowdown"] = hosts
    return CellOutput(metrics, payload=row)


def ideal_seconds(job: JobSpec) -> float:
    """Run time with free preprocessing and no interference, on an A100."""
    work = job.work
    if isinstance(work, DlrmWork):
        return work.iterations / work.ideal_rate()
    shape = AllocationShape("A100", job.task.num_gpus, 1, job.task.gpu_milli, job.replicas)
    return work.total / work.rate(shape, 0.0)


def run_row(
    rate: float,
    host_slowdown: float | None,
    policy: str,
    seed: int,
    summary: Mapping[str, Any],
    jobs: Sequence[tuple[object, ...]],
    ideal: Mapping[str, float],
) -> dict[str, Any]:
    """One run's figures; speed vs ideal is the mean over completed jobs of ideal run
    time / actual run time (start to end), so host slowdowns and slow preprocessing
    show even when the makespan is set by arrivals."""
    col = {name: i for i, name in enumerate(JOB_COLUMNS)}
    done = [r for r in jobs if r[col["status"]] == "completed"]
    dlrm = [r for r in done if r[col["kind"]] == DLRM_KIND]
    other = [r for r in done if r[col["kind"]] != DLRM_KIND]
    makespan_h = float(summary["makespan_s"]) / 3600.0
    # A DLRM job is one task; a second task in its placement is its preprocessing part.
    offloaded = sum(1 for r in dlrm if ";" in str(r[col["placement"]]))
    return {
        "rate_per_h": rate,
        "host_slowdown": "" if host_slowdown is None else host_slowdown,
        "policy": policy,
        "seed": seed,
        "completed": len(done),
        "jobs_per_h": len(done) / makespan_h if makespan_h else 0.0,
        "gpu_util": float(summary["gpu_util"]),
        "avg_jct_h": _mean_h(done, col["jct_s"]),
        "avg_jct_dlrm_h": _mean_h(dlrm, col["jct_s"]),
        "avg_jct_other_h": _mean_h(other, col["jct_s"]),
        "avg_queue_h": _mean_h(done, col["queue_delay_s"]),
        "dlrm_speed_vs_ideal": _speed(dlrm, col, ideal),
        "other_speed_vs_ideal": _speed(other, col, ideal),
        "offloaded_dlrm": offloaded,
    }


def _speed(
    rows: Sequence[tuple[object, ...]], col: Mapping[str, int], ideal: Mapping[str, float]
) -> float:
    ratios = [
        ideal[str(r[col["job_id"]])] / (float(r[col["end_s"]]) - float(r[col["start_s"]]))  # type: ignore[arg-type]
        for r in rows
    ]
    return statistics.mean(ratios) if ratios else 0.0


def _mean_h(rows: Sequence[tuple[object, ...]], index: int) -> float:
    values = [float(r[index]) for r in rows if r[index] is not None]  # type: ignore[arg-type]
    return statistics.mean(values) / 3600.0 if values else 0.0


def summarise_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (rate, host slowdown, policy)."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in runs:
        groups.setdefault((row["rate_per_h"], row["host_slowdown"], row["policy"]), []).append(row)
    summary = []
    for (rate, slowdown, policy), rows in groups.items():
        means = {
            key: round(statistics.mean(float(r[key]) for r in rows), 4)
            for key in CLUSTER_COLUMNS[4:]
        }
        summary.append(
            {
                "rate_per_h": rate,
                "host_slowdown": slowdown,
                "policy": policy,
                "seeds": len(rows),
                **means,
            }
        )
    return summary


# -- the command's grid -----------------------------------------------------------------


def make_cells(
    profiles: Mapping[ProfileKey, DlrmProfile], setup: ClusterSetup
) -> tuple[list[Cell], dict[str, MixedTrace]]:
    """Cells per (rate, host slowdown, setting, seed), settings the slowdown cannot
    affect at the first slowdown only; and the traces they read, by input name."""
    traces: dict[str, MixedTrace] = {}
    cells: list[Cell] = []
    for rate in setup.rates:
        spec = MixedTraceSpec(
            num_jobs=setup.jobs, jobs_per_hour=rate, dlrm_fraction=setup.dlrm_fraction
        )
        for index, slowdown in enumerate(setup.host_slowdowns):
            name = f"rate-{rate:g}/host-slowdown-{slowdown:g}"
            traces[f"trace:{name}"] = MixedTrace(profiles, spec, slowdown)
            digests = {f"trace:{name}": canonical_json([repr(spec), slowdown]), "cluster": ""}
            roles = {"trace": f"trace:{name}", "cluster": "cluster"}
            for label, options in POLICIES.items():
                if index > 0 and options["sharing"] != "cross_job":
                    continue
                for seed in range(setup.seeds):
                    params: dict[str, Any] = {"trace": name, "cluster": f"a100-{CLUSTER_GPUS}"}
                    params |= {"policy": label}
                    params |= {"options": options, "seed": seed}
                    cells.append(make_cell(CELL_TASK, params, roles, digests))
    return cells, traces


# -- in a sweep spec (`experiment: rap`) ---------------------------------------------------

GENERATOR_SETTINGS: dict[str, Any] = {
    "data": None,
    "jobs": 300,
    "rate": 0.7,
    "dlrm_fraction": 0.3,
    "host_slowdown": CoRunCosts().host_slowdown,
}
"""A generated trace's settings (the command's flags); `data`: the profile folder."""


def _settings(source: TraceSource) -> dict[str, Any]:
    unknown = sorted(set(source.generate) - set(GENERATOR_SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} ({', '.join(GENERATOR_SETTINGS)})")
    settings = {**GENERATOR_SETTINGS, **source.generate}
    data = settings["data"]
    settings["data"] = default_data_dir() if data is None else source.resolve(data)
    return settings


def _sweep_trace(source: TraceSource) -> MixedTrace:
    if source.path is not None:
        raise ValueError("the rap experiment generates its traces (generate: {jobs, rate, ...})")
    settings = _settings(source)
    if int(settings["jobs"]) < 1 or float(settings["rate"]) <= 0:
        raise ValueError("jobs must be >= 1 and rate positive")
    if not 0 <= float(settings["host_slowdown"]) < 1:
        raise ValueError("host_slowdown must lie in [0, 1)")
    if not 0 < float(settings["dlrm_fraction"]) <= 1:
        raise ValueError("dlrm_fraction must lie in (0, 1]")
    spec = MixedTraceSpec(
        num_jobs=int(settings["jobs"]),
        jobs_per_hour=float(settings["rate"]),
        dlrm_fraction=float(settings["dlrm_fraction"]),
    )
    return MixedTrace(load_profiles(settings["data"]), spec, float(settings["host_slowdown"]))


def _sweep_digest(source: TraceSource) -> str:
    settings = _settings(source)
    data: Path = settings.pop("data")
    return canonical_json([settings, [file_digest(data / n) for n in (STAGE_FILE, WORK_FILE)]])


def _sweep_cluster(entry: Mapping[str, Any], _base: Path) -> tuple[str, list[NodeSpec]]:
    if set(entry) - {"gpus"}:
        raise SpecError("cluster", "the rap experiment takes {gpus: N} (A100s)")
    try:
        gpus = int(entry.get("gpus", CLUSTER_GPUS))
        return f"a100-{gpus}", homogeneous_cluster(gpus, model="A100")
    except (TypeError, ValueError) as err:
        raise SpecError("cluster.gpus", str(err)) from None


def _sweep_policy(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A setting of `POLICIES` (options on top of its own) or `rap` with options."""
    if name != "rap" and name not in POLICIES:
        raise ValueError(f"not {name!r}: the rap experiment runs rap or {', '.join(POLICIES)}")
    chosen = {**POLICIES.get(name, {}), **options}
    make_policy("rap", chosen)  # a bad option fails before any cell runs
    label = ":".join([name, *(f"{k}={v}" for k, v in options.items())])
    return {"policy": label, "options": chosen}


SWEEP = SweepExperiment(
    CELL_TASK, {}, METRICS, _sweep_trace, _sweep_cluster, _sweep_policy, _sweep_digest
)
"""The fields in order: task, settings (none), metrics, and how a trace, the cluster
and a policy are read and a trace keyed."""
