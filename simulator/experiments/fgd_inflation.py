"""The FGD paper's inflation study (ATC'23 §6, docs/fgd.md).

For every trace, policy and seed: shuffle the trace's tasks, append clones drawn with
replacement until the GPU requested reaches `--inflate` × the cluster's GPU capacity,
and submit them one by one to an initially empty cluster; tasks never leave, and a task
that does not fit is dropped. After each task the cluster is measured; one row per whole
percent of arrived workload (0..100·inflate) goes to `curves.csv`.

There is no clock here, so no simpy: each task is a one-job `Snapshot` handed to the
same policy objects the simulator and the controller use, and the `Place` decision is
applied to a `ClusterState`. The workload's RNG stream (shuffle, clones) is separate
from the policy's (Random-fit) and from the node order's (`artifact_node_order`), so
every policy sees the same task sequence and the same node order per seed.

Each run is a cell of the sweep runner (`simulator.sweep`) on the executor that
`--executor` and `--workers` choose, here or through `gpufleet sweep` with
`experiment: fgd-inflation`.

Over 500 lines because the study's run loop, its measurement, its sweep cell and its
outputs (curves, failures, summary, plots) are one experiment.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from policies import (
    MILLI,
    ClusterState,
    Context,
    FixedDuration,
    JobSpec,
    JobStatus,
    JobView,
    NodeSpec,
    Place,
    Policy,
    Snapshot,
    TaskRequest,
    make_policy,
    policy_class,
)
from policies.fragmentation import NodeFragmentation
from policies.registry import parse_policy_label
from policies.target_workload import TargetWorkload, workload_from_jobs
from simulator.experiments import (
    add_executor_arguments,
    executor_for,
    experiment_output,
    payloads,
    run_experiment_cells,
)
from simulator.sweep.cells import Cell, CellOutput, Scalar, make_cell
from simulator.sweep.spec import SpecError, SweepExperiment, TraceSource, file_digest, seed_list
from traces.errors import TraceError
from traces.openb import read_nodes, read_pods
from traces.outputs import add_force_argument

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

NAME = "fgd-inflation"
HELP = "FGD paper's inflation study: unallocated GPUs and fragmentation vs arrived load"

CURVE_COLUMNS = (
    "trace",
    "policy",
    "seed",
    "arrived_pct",
    "alloc_pct",
    "unallocated_gpus",
    "frag_amount_pct",
    "frag_ratio_pct",
)
FAILURE_COLUMNS = (
    "trace",
    "policy",
    "seed",
    "task_class",
    "cpu_milli",
    "num_gpus",
    "gpu_milli",
    "gpu_models",
    "failed",
)
SUMMARY_COLUMNS = (
    "trace",
    "policy",
    "seeds",
    "unallocated_gpus_mean",
    "unallocated_gpus_std",
    "alloc_pct_mean",
    "frag_amount_pct_mean",
    "frag_ratio_pct_mean",
    "run_s_median",
    "run_cpu_s_median",
)
DEFAULT_POLICIES = "fgd,bestfit,packing,clustering,dotprod,random"
TRACE_PREFIX = "openb_pod_list_"


# -- inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """A pod list: jobs sorted by name (the artifact's order before shuffling)."""

    name: str
    jobs: tuple[JobSpec, ...]


@dataclass(frozen=True)
class RunSpec:
    trace: str
    policy: str
    seed: int


@dataclass
class RunOutput:
    spec: RunSpec
    curve: list[tuple[object, ...]]
    failures: list[tuple[object, ...]]
    seconds: float
    cpu_seconds: float


def load_trace(path: Path) -> Trace:
    jobs = [
        JobSpec(
            id=pod.name,
            submit_time=0.0,
            task=pod.task,
            work=FixedDuration(1.0),
            allowed_models=pod.allowed_models,
            kind="pod",
        )
        for pod in read_pods(path)
    ]
    if not jobs:
        raise TraceError(path, "no pods")
    jobs.sort(key=lambda j: j.id)
    name = path.stem.removeprefix(TRACE_PREFIX)
    return Trace(name, tuple(jobs))


def expand_pod_paths(patterns: Sequence[str]) -> list[Path]:
    """Files named by --pods: a file, a directory (its openb pod lists) or a glob."""
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(path.glob(f"{TRACE_PREFIX}*.csv"))
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern))
        if not found:
            raise TraceError(pattern, "no pod list matches")
        paths.extend(p for p in found if p not in paths)
    return paths


def parse_seeds(text: str) -> list[int]:
    """`42-51`, `42,43,50` or a mix."""
    return seed_list(text, "--seeds")


def build_policy(label: str, target: TargetWorkload) -> Policy:
    """The policy for `label`; a policy with a `workload` option gets the trace's."""
    name, options = parse_policy_label(label)
    wants_workload = any(f.name == "workload" for f in fields(policy_class(name).config_type))
    config: dict[str, object] = dict(options)
    if wants_workload:
        config["workload"] = target
    return make_policy(name, config)


# -- one run --------------------------------------------------------------------------


def inflated_order(
    trace: Trace, capacity_milli: int, ratio: float, rng: np.random.Generator
) -> list[JobSpec]:
    """The trace shuffled, then clones sampled with replacement while the total GPU
    request stays within `ratio` × capacity (the artifact's `tuneUpPods`)."""
    originals = trace.jobs
    order = [originals[i] for i in rng.permutation(len(originals))]
    target = ratio * capacity_milli
    requested = sum(j.gpu_milli_total for j in originals)
    clone = 0
    while True:
        pick = originals[int(rng.integers(len(originals)))]
        if requested + pick.gpu_milli_total > target:
            break
        requested += pick.gpu_milli_total
        order.append(_clone(pick, clone))
        clone += 1
    return order


def artifact_node_order(nodes: Sequence[NodeSpec], rng: np.random.Generator) -> list[NodeSpec]:
    """The nodes renamed and ordered as the artifact's run sees them.

    Its simulator sorts the nodes by name, then prefixes each with its position in a
    seeded random permutation (`%04d-openb-node-0042`), so its first-name tie-break, which
    every score plugin relies on, is a fresh random node order per seed. The prefix is
    kept so that name order and index order stay the same here too."""
    ranked = sorted(nodes, key=lambda n: n.name)
    width = max(4, len(str(len(ranked) - 1)))
    renamed = [
        replace(node, name=f"{int(rank):0{width}d}-{node.name}")
        for node, rank in zip(ranked, rng.permutation(len(ranked)), strict=True)
    ]
    return sorted(renamed, key=lambda n: n.name)


def _clone(job: JobSpec, index: int) -> JobSpec:
    return JobSpec(
        id=f"{job.id}-tuned-{index}",
        submit_time=0.0,
        task=job.task,
        work=job.work,
        allowed_models=job.allowed_models,
        kind=job.kind,
    )


def run_inflation(
    trace: Trace, nodes: Sequence[NodeSpec], label: str, seed: int, ratio: float
) -> RunOutput:
    start = time.perf_counter()
    cpu_start = time.process_time()
    workload_seed, policy_seed, node_seed = np.random.SeedSequence(seed).spawn(3)
    state = ClusterState(artifact_node_order(nodes, np.random.default_rng(node_seed)))
    capacity = state.total_gpus * MILLI
    jobs = inflated_order(trace, capacity, ratio, np.random.default_rng(workload_seed))
    target = workload_from_jobs(trace.jobs)
    policy = build_policy(label, target)
    ctx = Context(np.random.default_rng(policy_seed))
    meter = _Meter(state, target, RunSpec(trace.name, label, seed))
    last_pct = round(ratio * 100)
    failed: Counter[tuple[TaskRequest, frozenset[str] | None]] = Counter()
    for job in jobs:
        meter.record_until(meter.arrived + job.gpu_milli_total, last_pct)
        meter.arrived += job.gpu_milli_total
        if not _submit(policy, ctx, state, job):
            failed[(job.task, job.allowed_models)] += 1
    meter.record_until(None, last_pct)
    failures = [(trace.name, label, seed, *_describe(*key), count) for key, count in failed.items()]
    return RunOutput(
        meter.spec,
        meter.rows,
        failures,
        time.perf_counter() - start,
        time.process_time() - cpu_start,
    )


def _submit(policy: Policy, ctx: Context, state: ClusterState, job: JobSpec) -> bool:
    pending = (JobView(job, JobStatus.PENDING),)
    result = policy.schedule(Snapshot(state.view(), (), pending, 0.0), ctx)
    placed = False
    for decision in result.decisions:
        if isinstance(decision, Place):
            for task in decision.placement.tasks:
                state.allocate(
                    state.node_index[task.node],
                    task.gpus,
                    task.gpu_milli,
                    job.task.cpu_milli,
                    job.task.mem_mib,
                )
            placed = True
    return placed


def _describe(task: TaskRequest, allowed_models: frozenset[str] | None) -> tuple[object, ...]:
    if not task.num_gpus:
        kind = "cpu"
    elif task.is_sharing:
        kind = "share"
    else:
        kind = f"{task.num_gpus}-gpu"
    models = "|".join(sorted(allowed_models or ()))
    return (kind, task.cpu_milli, task.num_gpus, task.gpu_milli, models)


class _Meter:
    """Takes one curve row per whole percent of arrived GPU request."""

    def __init__(self, state: ClusterState, target: TargetWorkload, spec: RunSpec) -> None:
        self.state = state
        self.spec = spec
        self.capacity = state.total_gpus * MILLI
        self.fragmentation = NodeFragmentation(target)
        self.arrived = 0
        self.next_pct = 0
        self.rows: list[tuple[object, ...]] = []

    def record_until(self, arrived_next: int | None, last_pct: int) -> None:
        """Rows for every percent the next task's arrival passes (state before it), or
        for all remaining percents when `arrived_next` is None (the run is over)."""
        while self.next_pct <= last_pct and (
            arrived_next is None or self.next_pct * self.capacity < arrived_next * 100
        ):
            self.rows.append(self._row(self.next_pct))
            self.next_pct += 1

    def _row(self, pct: int) -> tuple[object, ...]:
        self.fragmentation.sync(self.state)
        idle = self.fragmentation.idle_milli()
        frag = self.fragmentation.cluster_amount()
        allocated = self.capacity - idle
        return (
            self.spec.trace,
            self.spec.policy,
            self.spec.seed,
            pct,
            round(100.0 * allocated / self.capacity, 4),
            round(idle / MILLI, 3),
            round(100.0 * frag / self.capacity, 4),
            round(100.0 * frag / idle, 4) if idle else 0.0,
        )


# -- many runs: cells of the sweep runner ---------------------------------------------

CELL_TASK = "simulator.experiments.fgd_inflation:run_cell"
READ_AT_PCT = 100
"""Arrived workload (%) at which a cell's metrics are read (the paper's headline)."""


def run_cell(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """One inflation run as a sweep cell: metrics at 100% arrived (or the last percent),
    `curve.csv` and `failures.csv`, and the `RunOutput` as payload."""
    trace = replace(inputs["trace"], name=str(params["trace"]))
    ratio = float(params["inflate"])
    output = run_inflation(
        trace, inputs["cluster"], str(params["policy"]), int(params["seed"]), ratio
    )
    pct = min(READ_AT_PCT, round(ratio * 100))
    row = next(r for r in output.curve if r[3] == pct)
    metrics: dict[str, Scalar] = {
        name: cast(float, value) for name, value in zip(CURVE_COLUMNS[4:], row[4:], strict=True)
    }
    files = {
        "curve.csv": _csv_text(CURVE_COLUMNS, output.curve).encode(),
        "failures.csv": _csv_text(FAILURE_COLUMNS, output.failures).encode(),
    }
    return CellOutput(metrics, files, output)


def make_cells(
    traces: Mapping[str, Trace],
    digests: Mapping[str, str],
    labels: Sequence[str],
    seeds: Sequence[int],
    ratio: float,
) -> list[Cell]:
    """Cells in trace, policy, seed order; each reads its trace and the node list."""
    return [
        make_cell(
            CELL_TASK,
            {"trace": name, "policy": label, "seed": seed, "inflate": ratio},
            {"trace": f"trace:{name}", "cluster": "cluster"},
            digests,
        )
        for name in traces
        for label in labels
        for seed in seeds
    ]


def _load_sweep_trace(source: TraceSource) -> Trace:
    if source.path is None or source.format != "openb":
        raise ValueError("the fgd-inflation experiment reads openb pod lists (format: openb)")
    return load_trace(source.path)


def _load_sweep_nodes(entry: Mapping[str, Any], base: Path) -> tuple[str, list[NodeSpec]]:
    if set(entry) != {"file"}:
        raise SpecError("cluster", "the fgd-inflation experiment takes {file: openb node list}")
    path = Path(entry["file"])
    return str(entry["file"]), read_nodes(
        path if path.is_absolute() else base / path, gpu_only=True
    )


def _policy_label(name: str, options: dict[str, Any]) -> dict[str, Any]:
    make_policy(name, options)  # an unknown name or option fails before any cell runs
    return {"policy": ":".join([name, *(f"{k}={v}" for k, v in options.items())])}


SWEEP = SweepExperiment(
    task=CELL_TASK,
    settings={"inflate": 1.3},
    metrics=CURVE_COLUMNS[4:],
    load_trace=_load_sweep_trace,
    load_cluster=_load_sweep_nodes,
    policy_params=_policy_label,
)


# -- CLI -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pods",
        action="append",
        required=True,
        metavar="CSV",
        help="openb pod list; a directory or glob for several; repeatable",
    )
    parser.add_argument("--nodes", required=True, metavar="CSV", help="openb node list")
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help="comma-separated; NAME or NAME:KEY=VALUE:... (default: %(default)s)",
    )
    parser.add_argument("--seeds", default="42-51", help="e.g. 42-51 or 1,2,3 (default: 42-51)")
    parser.add_argument(
        "--inflate", type=float, default=1.3, help="GPU request ÷ capacity to reach (default 1.3)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_force_argument(parser)
    add_executor_arguments(parser, workers=None)
    parser.add_argument(
        "--plots", action=argparse.BooleanOptionalAction, default=True, help="write PNG plots"
    )


def run(args: argparse.Namespace) -> int:
    if not 0 < args.inflate <= 5:
        raise ValueError("--inflate must be in (0, 5]")
    executor = executor_for(args)
    seeds = parse_seeds(args.seeds)
    labels = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not labels:
        raise ValueError("--policies names no policy")
    nodes = read_nodes(args.nodes, gpu_only=True)
    traces, paths = _load_traces(expand_pod_paths(args.pods))
    dummy = next(iter(traces.values()))
    for label in labels:
        build_policy(label, workload_from_jobs(dummy.jobs))  # fail fast on bad names/options
    digests = {f"trace:{name}": file_digest(path) for name, path in paths.items()}
    digests["cluster"] = file_digest(Path(args.nodes))
    cells = make_cells(traces, digests, labels, seeds, float(args.inflate))
    inputs = {"cluster": nodes, **{f"trace:{name}": trace for name, trace in traces.items()}}
    with experiment_output(NAME, args) as stage:
        report = run_experiment_cells(NAME, cells, inputs, executor, args, _log_run)
        outputs = payloads(report, cells)
        _write_outputs(stage, outputs, args.plots, round(args.inflate * 100))
    print(f"wrote {len(outputs)} runs to {args.out}")
    return 0


def _load_traces(paths: Sequence[Path]) -> tuple[dict[str, Trace], dict[str, Path]]:
    """Traces by name, and the file each came from."""
    traces: dict[str, Trace] = {}
    files: dict[str, Path] = {}
    for path in paths:
        trace = load_trace(path)
        if trace.name in traces:
            raise TraceError(path, f"two pod lists are both named {trace.name!r}")
        traces[trace.name] = trace
        files[trace.name] = path
    return traces, files


def _log_run(done: int, total: int, record: Mapping[str, Any], elapsed_s: float) -> None:
    params, metrics = record["params"], record["metrics"]
    print(
        f"[{done}/{total}] {params['trace']} {params['policy']} seed {params['seed']}: "
        f"{record['wall_s']:.1f} s ({record['cpu_s']:.1f} s CPU), "
        f"unallocated GPUs at {READ_AT_PCT}%: {metrics.get('unallocated_gpus')} "
        f"({elapsed_s:.0f} s elapsed)" + (f" FAILED: {record['error']}" if record["error"] else ""),
        file=sys.stderr,
        flush=True,
    )


def _write_outputs(out: Path, outputs: Sequence[RunOutput], plots: bool, last_pct: int) -> None:
    _write_csv(out / "curves.csv", CURVE_COLUMNS, (r for o in outputs for r in o.curve))
    _write_csv(out / "failures.csv", FAILURE_COLUMNS, (r for o in outputs for r in o.failures))
    read_at = min(100, last_pct)
    _write_csv(out / "summary.csv", SUMMARY_COLUMNS, summarise(outputs, read_at))
    if plots:
        plot_curves(outputs, out / "plots", read_at)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[tuple[object, ...]]) -> None:
    path.write_text(_csv_text(columns, rows), encoding="utf-8")


def _csv_text(columns: Sequence[str], rows: Iterable[tuple[object, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def summarise(outputs: Sequence[RunOutput], pct: int) -> list[tuple[object, ...]]:
    """Per trace and policy: mean (and spread) over seeds at `pct` arrived."""
    groups: dict[tuple[str, str], list[RunOutput]] = {}
    for output in outputs:
        groups.setdefault((output.spec.trace, output.spec.policy), []).append(output)
    rows: list[tuple[object, ...]] = []
    for (trace, policy), runs in groups.items():
        at = np.array([next(r for r in o.curve if r[3] == pct)[4:] for o in runs], dtype=float)
        seconds = [o.seconds for o in runs]
        cpu_seconds = [o.cpu_seconds for o in runs]
        rows.append(
            (
                trace,
                policy,
                len(runs),
                round(float(at[:, 1].mean()), 2),
                round(float(at[:, 1].std()), 2),
                round(float(at[:, 0].mean()), 3),
                round(float(at[:, 2].mean()), 3),
                round(float(at[:, 3].mean()), 3),
                round(float(np.median(seconds)), 2),
                round(float(np.median(cpu_seconds)), 2),
            )
        )
    return rows


# -- plots ------------------------------------------------------------------------------

PANELS = (
    ("unallocated_pct", "unallocated GPU (% of capacity)"),
    ("frag_amount_pct", "fragmented GPU (% of capacity)"),
    ("frag_ratio_pct", "fragmented share of idle GPU (%)"),
)


def plot_curves(outputs: Sequence[RunOutput], out_dir: Path, read_at: int) -> None:
    """One PNG per trace: the three curves vs arrived workload (mean over seeds, band
    from min to max) and bars of unallocated GPUs at `read_at`% arrived."""
    import pandas as pd

    from simulator.plotting import subplots

    frame = pd.DataFrame([r for o in outputs for r in o.curve], columns=list(CURVE_COLUMNS)).assign(
        unallocated_pct=lambda d: 100.0 - d.alloc_pct
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for trace, data in frame.groupby("trace", sort=False):
        fig, axes = subplots(1, 4, figsize=(20, 4.2))
        stats = data.groupby(["policy", "arrived_pct"], sort=False)
        for (column, title), ax in zip(PANELS, axes, strict=False):
            agg = stats[column].agg(["mean", "min", "max"]).reset_index()
            for policy, rows in agg.groupby("policy", sort=False):
                ax.plot(rows.arrived_pct, rows["mean"], label=str(policy))
                ax.fill_between(rows.arrived_pct, rows["min"], rows["max"], alpha=0.2)
            ax.set_xlabel("arrived workload (% of GPU capacity)")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        top = int(data.arrived_pct.max())
        axes[0].plot([0, 100, max(top, 100)], [100, 0, 0], "k--", lw=0.8, label="ideal")
        axes[0].legend(fontsize=8)
        _bars(axes[3], data[data.arrived_pct == read_at], read_at)
        fig.suptitle(f"{trace}: inflation study")
        fig.tight_layout()
        fig.savefig(out_dir / f"{trace}.png", dpi=90)


def _bars(ax: Axes, at: pd.DataFrame, read_at: int) -> None:
    per_policy = at.groupby("policy", sort=False).unallocated_gpus.agg(["mean", "std"])
    labels = [str(p) for p in per_policy.index]
    colors = [f"C{i}" for i in range(len(labels))]  # the line plots' colours, same order
    ax.bar(labels, per_policy["mean"], yerr=per_policy["std"].fillna(0), capsize=3, color=colors)
    ax.set_title(f"unallocated GPUs at {read_at}% arrived")
    ax.tick_params(axis="x", rotation=30)
