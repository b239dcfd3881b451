"""`gpufleet experiment hetero`: Sia vs Gavel vs baselines on heterogeneous clusters.

Runs every workload (each `*.csv` in the `--workloads` folders, Sia's format; and/or
`--gavel-traces N` traces generated from Gavel's throughput file) under every policy on
one named cluster. Each trace runs as its published simulator ran it
(`simulator.semantics`, shared with `gpufleet simulate`): on Sia workloads, policies that
adapt jobs (Sia) get adaptive jobs, every other policy runs each job rigidly at its
TunedJobs GPUs and batch, and every start pays the job's checkpoint-restore delay; Gavel's
generated traces are rigid and pay no restart time, as in Gavel's simulator.

`--gavel-window START-END` measures as Gavel's simulator does (its figures use jobs
4000-5000): single-GPU jobs keep arriving (Gavel's own trace for the seed and rate, job
for job) until jobs START..END-1 have all completed, and the summary covers those jobs.

Each run is a cell of the sweep runner (`--executor`, `--workers`); a sweep spec with
`experiment: hetero` runs the same cells (`hetero_sweep`).

Output directory:

- `summary.csv`: workload,policy,jobs,avg_jct_h,p99_jct_h,makespan_h,gpu_hours_per_job,
  restarts_per_job (p99 is the sorted JCT at index ⌊0.99·n⌋, as Sia's scripts take it);
- `policy_timing.csv`: per run, policy wall time per pass (median, p95), completions, and
  the run's wall and CPU seconds;
- `jobs.csv`: one row per job and run; `rounds.csv`: one row per scheduling pass;
  `timeline.csv`: GPUs allocated per GPU model after each change;
- `jct_cdf.png` (JCT CDF per policy, all workloads pooled) and
  `gpus_by_model_<policy>.png` (GPUs per model over time, first workload).

Everything is written to a temporary sibling directory and moved into place at the end
(see `traces.outputs` for what may already be in `--out`).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from policies import JobSpec, make_policy, policy_class
from policies.registry import parse_policy_label
from simulator.clusters import cluster_names, named_cluster
from simulator.engine import EngineOptions, Simulation
from simulator.experiments import (
    add_executor_arguments,
    executor_for,
    experiment_output,
    payloads,
    run_experiment_cells,
)
from simulator.metrics import JOB_COLUMNS, PASS_COLUMNS, Recorder
from simulator.plotting import subplots
from simulator.semantics import GAVEL_GENERATED, run_semantics
from simulator.sweep.cells import Cell, CellOutput, canonical_json, make_cell
from simulator.sweep.spec import file_digest
from traces import sia as sia_traces
from traces.errors import TraceError
from traces.gavel_throughputs import (
    GavelThroughputs,
    generate_jobs,
    job_stream,
    read_throughputs,
)
from traces.outputs import add_force_argument

NAME = "hetero"
HELP = "Sia vs Gavel vs baselines on heterogeneous clusters (Sia or Gavel workloads)"
SUMMARY_COLUMNS = (
    "workload",
    "policy",
    "jobs",
    "avg_jct_h",
    "p99_jct_h",
    "makespan_h",
    "gpu_hours_per_job",
    "restarts_per_job",
)
TIMING_COLUMNS = (
    "workload",
    "policy",
    "completed",
    "unfinished",
    "passes",
    "policy_ms_median",
    "policy_ms_p95",
    "wall_s",
    "cpu_s",
)
DEFAULT_GAVEL_FILE = "../shared/data/gavel/simulation_throughputs.json"


@dataclass(frozen=True)
class Workload:
    """A Sia workload file, or a generated Gavel trace (file, seed, jobs, rate)."""

    name: str
    path: Path
    profiles: Path | None = None
    gavel_seed: int | None = None
    gavel_jobs: int = 0
    gavel_rate: float = 0.0
    gavel_window: tuple[int, int] | None = None
    """Measure jobs [start, end) of a continuous single-GPU trace, as Gavel's simulator."""


@dataclass(frozen=True)
class RunOutput:
    workload: str
    policy: str
    """The policy's label, `NAME[:KEY=VALUE...]`."""
    summary: tuple[object, ...]
    timing: tuple[object, ...]
    jobs: list[tuple[object, ...]]
    rounds: list[tuple[object, ...]]
    timeline: list[tuple[object, ...]]
    models: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workloads", nargs="+", default=[], metavar="DIR", help="folders of Sia workload CSVs"
    )
    parser.add_argument("--profiles", metavar="DIR", help="Sia profile folder (default: beside)")
    parser.add_argument(
        "--gavel-traces", type=int, default=0, metavar="N", help="also run N generated traces"
    )
    parser.add_argument("--gavel-file", default=DEFAULT_GAVEL_FILE, metavar="JSON")
    parser.add_argument("--gavel-jobs", type=int, default=300, help="jobs per Gavel trace")
    parser.add_argument(
        "--gavel-rate",
        type=float,
        nargs="+",
        default=[10.0],
        metavar="RATE",
        help="Gavel jobs per hour; several rates run one trace each (default: 10)",
    )
    parser.add_argument(
        "--gavel-window",
        type=parse_window,
        metavar="START-END",
        help="Gavel's own measurement: a continuous trace of single-GPU jobs that arrive "
        "until jobs START..END-1 have all completed; summaries cover those jobs only "
        "(replaces --gavel-jobs; e.g. 500-1000)",
    )
    parser.add_argument("--cluster", default="sia-64", help=f"one of {', '.join(cluster_names())}")
    parser.add_argument("--scale", type=int, default=1, help="multiply node counts by k")
    parser.add_argument(
        "--policies",
        default="sia,gavel,las,fifo",
        help="comma-separated; NAME or NAME:KEY=VALUE:...",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_force_argument(parser)
    add_executor_arguments(parser, workers=1)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    executor = executor_for(args)
    nodes = named_cluster(args.cluster, args.scale)  # fail fast on a bad name or scale
    policies = [parse_policy(label) for label in args.policies.split(",") if label]
    if not policies:
        raise ValueError("--policies names no policy")
    for name, options in policies:
        make_policy(name, options)
    workloads = find_workloads(args)
    modes = {run_semantics("sia", policy_class(name)).job_mode for name, _ in policies}
    inputs: dict[str, Any] = {f"trace:{w.name}": load_workload(w, modes) for w in workloads}
    inputs["cluster"] = nodes
    label = args.cluster if args.scale == 1 else f"{args.cluster}x{args.scale}"
    cells = make_cells(workloads, policies, label, args.seed)
    with experiment_output(NAME, args) as stage:
        report = run_experiment_cells(NAME, cells, inputs, executor, args, _log_run)
        write_results(stage, payloads(report, cells))
    return 0


def parse_policy(label: str) -> tuple[str, dict[str, str]]:
    name, options = parse_policy_label(label)
    policy_class(name)
    return name, options


def find_workloads(args: argparse.Namespace) -> list[Workload]:
    workloads = []
    profiles = Path(args.profiles) if args.profiles else None
    for folder in args.workloads:
        path = Path(folder)
        if not path.is_dir():
            raise TraceError(path, "no such workload folder")
        files = sorted(path.glob("*.csv"), key=_natural)
        if not files:
            raise TraceError(path, "no *.csv workload files")
        workloads += [Workload(f"{path.name}/{f.stem}", f, profiles) for f in files]
    if args.gavel_window is not None and not args.gavel_traces:
        raise ValueError("--gavel-window needs --gavel-traces N (the seeds 0..N-1 to run)")
    if args.gavel_traces:
        gavel_file = Path(args.gavel_file)
        read_throughputs(gavel_file)  # validate before any run starts
        if any(rate <= 0 for rate in args.gavel_rate):
            raise ValueError("--gavel-rate: every rate must be positive")
        workloads += [
            Workload(
                f"gavel/rate-{rate:g}/seed-{seed}",
                gavel_file,
                None,
                seed,
                args.gavel_jobs,
                rate,
                args.gavel_window,
            )
            for rate in args.gavel_rate
            for seed in range(args.gavel_traces)
        ]
    if not workloads:
        raise ValueError("nothing to run: give --workloads DIR and/or --gavel-traces N")
    return workloads


def parse_window(text: str) -> tuple[int, int]:
    """`START-END` → (START, END), job ids START..END-1 (Gavel's `-s` and `-e`)."""
    start, _, end = text.partition("-")
    try:
        window = int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START-END, e.g. 500-1000") from None
    if not 0 <= window[0] < window[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= START < END")
    return window


def _natural(path: Path) -> tuple[object, ...]:
    stem = path.stem
    digits = "".join(c for c in stem if c.isdigit())
    return (stem.rstrip("0123456789"), int(digits) if digits else -1, stem)


# -- one run: a cell of the sweep runner ------------------------------------------------

CELL_TASK = "simulator.experiments.hetero:run_cell_with_output"


@dataclass(frozen=True)
class GavelStream:
    """Gavel's continuous single-GPU trace, measured on jobs `window` = [start, end)."""

    throughputs: GavelThroughputs
    rate: float
    seed: int
    window: tuple[int, int]

    def jobs(self) -> Iterator[JobSpec]:
        return job_stream(self.throughputs, self.rate, self.seed, multi_gpu=False)

    def window_ids(self) -> frozenset[str]:
        return frozenset(f"gavel-{i}" for i in range(*self.window))


@dataclass(frozen=True)
class WorkloadJobs:
    """A workload as its cells read it (loaded once, before any run): its jobs per job
    category (`RunSemantics.job_mode`), or Gavel's continuous trace."""

    trace_format: str
    by_mode: Mapping[str | None, Sequence[JobSpec]] = field(default_factory=dict)
    stream: GavelStream | None = None


def load_workload(workload: Workload, modes: Iterable[str | None]) -> WorkloadJobs:
    """A Sia workload's jobs in each of `modes`, or a Gavel trace (its jobs, or its
    continuous stream when measured on a window)."""
    if workload.gavel_seed is None:
        by_mode = {m: sia_traces.read_jobs(workload.path, workload.profiles, mode=m) for m in modes}
        return WorkloadJobs("sia", by_mode)
    table = read_throughputs(workload.path)
    if workload.gavel_window is not None:
        stream = GavelStream(table, workload.gavel_rate, workload.gavel_seed, workload.gavel_window)
        return WorkloadJobs(GAVEL_GENERATED, stream=stream)
    jobs = generate_jobs(table, workload.gavel_jobs, workload.gavel_rate, workload.gavel_seed)
    return WorkloadJobs(GAVEL_GENERATED, {None: jobs})


def workload_digest(workload: Workload) -> str:
    """What a workload's cells are keyed by: its file's bytes and generator settings."""
    settings = (workload.gavel_seed, workload.gavel_jobs, workload.gavel_rate)
    return canonical_json([file_digest(workload.path), settings, workload.gavel_window])


def feed(sim: Simulation, jobs: Iterator[JobSpec]) -> simpy.events.ProcessGenerator:
    """Submit each job at its time, announcing the next before waiting for it, so the
    rounds go on until the run's measurement window completes."""
    for job in jobs:
        sim.expect_arrivals(1)
        if job.submit_time > sim.env.now:
            yield sim.env.timeout(job.submit_time - sim.env.now)
        sim.submit(job)


def run_cell_with_output(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """One run of `gpufleet experiment hetero` as a cell: its `RunOutput` as payload, from
    which the command writes its tables (a sweep spec's cell: `hetero_sweep.run_cell`)."""
    return CellOutput({}, payload=run_workload(params, inputs))


def run_workload(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> RunOutput:
    """Run workload `inputs["trace"]` on `inputs["cluster"]` under the cell's policy,
    options and seed, as the workload's published simulator ran it (`run_semantics`)."""
    workload: WorkloadJobs = inputs["trace"]
    cls = policy_class(str(params["policy"]))
    semantics = run_semantics(workload.trace_format, cls)
    policy = make_policy(cls.name, semantics.policy_options(cls, dict(params["options"])))
    stream = workload.stream
    window = stream.window_ids() if stream is not None else frozenset()
    options = EngineOptions(
        seed=int(params["seed"]),
        restart_cost_s=semantics.restart_cost_s,
        startup_delay=semantics.startup_delay,
        stop_after=window,
    )
    started, cpu = time.perf_counter(), time.process_time()
    if stream is not None:
        sim = Simulation(inputs["cluster"], [], policy, options)
        sim.env.process(feed(sim, stream.jobs()))
    else:
        sim = Simulation(inputs["cluster"], workload.by_mode[semantics.job_mode], policy, options)
    recorder = sim.run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    name, label = str(params["trace"]), policy_label(str(params["policy"]), params["options"])
    return RunOutput(
        workload=name,
        policy=label,
        summary=(name, label, *summarise(recorder, window)),
        timing=(name, label, *timing(recorder), round(wall, 2), round(cpu, 2)),
        jobs=[(name, label, *row) for row in recorder.jobs],
        rounds=[(name, label, *row) for row in recorder.passes],
        timeline=[(name, label, *row) for row in recorder.timeline],
        models=sim.cluster.models,
    )


def policy_label(policy: str, options: Mapping[str, Any]) -> str:
    return ":".join([policy, *(f"{k}={v}" for k, v in options.items())])


def summarise(recorder: Recorder, only: frozenset[str] = frozenset()) -> tuple[object, ...]:
    """jobs, avg/p99 JCT (h), makespan (h), GPU-hours per job, restarts per job; over the
    jobs in `only` when given (a measurement window), else over all."""
    rows = recorder.jobs
    if only:
        rows = [r for r in rows if r[JOB_COLUMNS.index("job_id")] in only]
    done = [r for r in rows if r[JOB_COLUMNS.index("status")] == "completed"]
    jcts = np.sort(_column(done, "jct_s"))
    count = len(rows)
    avg = float(jcts.mean()) / 3600 if jcts.size else float("nan")
    p99 = float(jcts[int(0.99 * jcts.size)]) / 3600 if jcts.size else float("nan")
    ends = _column(done, "end_s")
    makespan = (ends.max() - _column(rows, "submit_s").min()) / 3600 if ends.size else np.nan
    per_job = max(count, 1)
    return (
        count,
        round(avg, 4),
        round(p99, 4),
        round(float(makespan), 4),
        round(float(_column(rows, "attained_gpu_s").sum()) / 3600 / per_job, 4),
        round(float(_column(rows, "restarts").sum()) / per_job, 4),
    )


def _column(rows: Sequence[tuple[object, ...]], name: str) -> np.ndarray:
    index = JOB_COLUMNS.index(name)
    return np.array([float(str(r[index])) for r in rows], dtype=float)


def timing(recorder: Recorder) -> tuple[object, ...]:
    status = [r[JOB_COLUMNS.index("status")] for r in recorder.jobs]
    walls = np.array([float(str(p[1])) for p in recorder.passes])
    median = float(np.median(walls)) * 1000 if walls.size else 0.0
    p95 = float(np.percentile(walls, 95)) * 1000 if walls.size else 0.0
    return (
        status.count("completed"),
        status.count("unfinished"),
        len(recorder.passes),
        round(median, 3),
        round(p95, 3),
    )


# -- many runs -----------------------------------------------------------------------------


def make_cells(
    workloads: Sequence[Workload],
    policies: Sequence[tuple[str, dict[str, str]]],
    cluster: str,
    seed: int,
) -> list[Cell]:
    """Cells in workload, policy order; each reads its workload and the cluster."""
    digests = {f"trace:{w.name}": workload_digest(w) for w in workloads}
    digests["cluster"] = cluster
    return [
        make_cell(
            CELL_TASK,
            {"trace": w.name, "cluster": cluster, "policy": name, "options": options, "seed": seed},
            {"trace": f"trace:{w.name}", "cluster": "cluster"},
            digests,
        )
        for w in workloads
        for name, options in policies
    ]


def _log_run(done: int, total: int, record: Mapping[str, Any], elapsed_s: float) -> None:
    params = record["params"]
    label = policy_label(params["policy"], params["options"])
    outcome = f"FAILED: {record['error']}" if record["error"] else "done"
    print(
        f"[{done}/{total}] {params['trace']} {label} {outcome} ({elapsed_s:.0f}s)",
        file=sys.stderr,
        flush=True,
    )


def write_results(out: Path, outputs: Sequence[RunOutput]) -> None:
    """The tables and plots of every run, into the existing directory `out`."""
    for name, text in tables(outputs).items():
        (out / name).write_text(text, encoding="utf-8")
    plot_results(out, outputs)


def tables(outputs: Sequence[RunOutput]) -> dict[str, str]:
    """The experiment's CSV tables of `outputs`, by file name."""
    head = ("workload", "policy")
    timeline_cols = (
        *head,
        "time_s",
        "alloc_gpu_pct",
        "running",
        "pending",
        *(f"gpus_{m}" for m in outputs[0].models),
    )
    return {
        "summary.csv": _csv(SUMMARY_COLUMNS, [o.summary for o in outputs]),
        "policy_timing.csv": _csv(TIMING_COLUMNS, [o.timing for o in outputs]),
        "jobs.csv": _csv((*head, *JOB_COLUMNS), [r for o in outputs for r in o.jobs]),
        "rounds.csv": _csv((*head, *PASS_COLUMNS), [r for o in outputs for r in o.rounds]),
        "timeline.csv": _csv(timeline_cols, [r for o in outputs for r in o.timeline]),
    }


def _csv(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def plot_results(out: Path, outputs: Sequence[RunOutput]) -> None:
    status, jct = JOB_COLUMNS.index("status"), JOB_COLUMNS.index("jct_s")
    by_policy: dict[str, list[float]] = {}
    for o in outputs:
        by_policy.setdefault(o.policy, []).extend(
            float(str(r[2 + jct])) / 3600 for r in o.jobs if r[2 + status] == "completed"
        )
    fig, ax = subplots(figsize=(6, 4))
    for label, values in by_policy.items():
        xs = np.sort(values)
        ax.plot(xs, np.arange(1, xs.size + 1) / max(xs.size, 1), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (h)")
    ax.set_ylabel("fraction of jobs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "jct_cdf.png", dpi=120)
    first = outputs[0].workload
    for o in outputs:
        if o.workload != first or not o.timeline:
            continue
        rows = np.array([r[2:] for r in o.timeline], dtype=float)
        fig, ax = subplots(figsize=(7, 3.5))
        hours = rows[:, 0] / 3600
        ax.stackplot(hours, rows[:, 4:].T, labels=list(o.models), step="post")
        ax.set_xlabel("time (h)")
        ax.set_ylabel("GPUs allocated")
        ax.set_title(f"{first}: {o.policy}")
        ax.legend(loc="upper right")
        fig.tight_layout()
        safe = o.policy.replace(":", "_").replace("=", "-")
        fig.savefig(out / f"gpus_by_model_{safe}.png", dpi=120)
