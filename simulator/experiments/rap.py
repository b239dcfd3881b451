"""`gpufleet experiment rap`: RAP's single-job fidelity and cluster-level sharing.

Writes to `--out DIR` (all or nothing; `traces.outputs` says what may already be there):

* `single_job.csv` — `plan,num_gpus,mode,iteration_ms,throughput_ratio_vs_ideal` for
  every plan and GPU count in the data at the reference batch 4096 (plans 2 and 3
  extrapolated, see `traces.rap`).
* `fidelity.csv` — per plan, GPU count and batch: each mode's time, RAP's speedup over
  sequential and CPU preprocessing, and its gap below ideal.
* `sensitivity.csv` — mean/min/max speedup of RAP over sequential as the per-kernel
  dispatch overhead δ varies (measured plans only).
* `calibration.json` — the overheads derived from the paper's averages, and how.
* `cluster.csv` (+ `cluster_runs.csv` per seed) — a mixed DLRM/ordinary trace on 64
  A100 GPUs under no sharing, RAP on own GPUs and cross-job sharing, at two loads and
  two host slowdowns: throughput, GPU utilisation, JCT.
* `single_job.png`, `sensitivity.png`, `cluster.png`; `mixed_trace.csv`, the trace of
  the first seed at the first load, which `gpufleet simulate --format dlrm` replays.

The cluster runs are cells of the sweep runner (`rap_cluster`; `--executor`,
`--workers`); a sweep spec with `experiment: rap` runs the same cells.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from policies.dlrm import DlrmProfile, Mode
from policies.rap_model import (
    PAPER_CPU_WORKERS_PER_GPU,
    PAPER_GAP_BELOW_IDEAL,
    PAPER_SPEEDUP_VS_CPU,
    PAPER_SPEEDUP_VS_SEQUENTIAL,
    CoRunCosts,
    CoRunModel,
    calibrate_cpu_factor,
    calibrate_dispatch_overhead,
    corun_overhead_for_gap,
)
from simulator.experiments import (
    add_executor_arguments,
    executor_for,
    experiment_output,
    payloads,
    run_experiment_cells,
)
from simulator.experiments.rap_cluster import (
    CLUSTER_COLUMNS,
    CLUSTER_GPUS,
    ClusterSetup,
    make_cells,
    summarise_runs,
)
from simulator.plotting import subplots
from traces.outputs import add_force_argument
from traces.rap import ProfileKey, default_data_dir, load_profiles, write_jobs
from traces.synthetic import homogeneous_cluster

NAME = "rap"
HELP = "RAP GPU sharing: single-job modes vs the paper, and cluster-level sharing"

SINGLE_JOB_MODES = (Mode.IDEAL, Mode.CPU, Mode.SEQUENTIAL, Mode.NAIVE, Mode.RAP)
REFERENCE_BATCH = 4096
SENSITIVITY_DELTAS_MS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
SINGLE_JOB_COLUMNS = ("plan", "num_gpus", "mode", "iteration_ms", "throughput_ratio_vs_ideal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/rap", help="output directory (default: out/rap)")
    add_force_argument(parser)
    parser.add_argument(
        "--data", metavar="DIR", help="RAP profile directory (default: $GPUFLEET_DATA_DIR/rap)"
    )
    parser.add_argument("--jobs", type=int, default=300, help="jobs per cluster trace")
    parser.add_argument("--seeds", type=int, default=3, help="traces per setting (seeds 0..n-1)")
    parser.add_argument(
        "--rates", default="0.7,1.3", help="arrival rates, jobs/h (default: %(default)s)"
    )
    parser.add_argument(
        "--host-slowdowns",
        default="0.0335,0.3",
        help="slowdown a remote part charges each host (default: %(default)s)",
    )
    parser.add_argument(
        "--dlrm-fraction", type=float, default=0.3, help="share of DLRM jobs (default: 0.3)"
    )
    add_executor_arguments(parser, workers=1)


def run(args: argparse.Namespace) -> int:
    executor = executor_for(args)
    setup = ClusterSetup(
        args.jobs,
        args.seeds,
        _floats(args.rates, "--rates"),
        _floats(args.host_slowdowns, "--host-slowdowns"),
        args.dlrm_fraction,
    )
    profiles = load_profiles(args.data or default_data_dir())
    measured = [p for p in profiles.values() if not p.extrapolated]
    model = CoRunModel()
    single = single_job_rows(profiles, model)
    fidelity = fidelity_rows(profiles, model)
    sensitivity = sensitivity_rows(measured)
    calibration = calibration_report(measured)
    cells, traces = make_cells(profiles, setup)
    inputs = {**traces, "cluster": homogeneous_cluster(CLUSTER_GPUS, model="A100")}
    with experiment_output(NAME, args) as stage:
        report = run_experiment_cells(NAME, cells, inputs, executor, args, _log_run)
        cluster_runs: list[dict[str, Any]] = payloads(report, cells)
        cluster = summarise_runs(cluster_runs)
        trace = traces[f"trace:{cells[0].params['trace']}"].jobs(seed=0)
        write_csv(stage / "single_job.csv", SINGLE_JOB_COLUMNS, single)
        write_csv(stage / "fidelity.csv", tuple(fidelity[0]), fidelity)
        write_csv(stage / "sensitivity.csv", tuple(sensitivity[0]), sensitivity)
        (stage / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
        write_csv(stage / "cluster.csv", CLUSTER_COLUMNS, cluster)
        write_csv(stage / "cluster_runs.csv", tuple(cluster_runs[0]), cluster_runs)
        write_jobs(trace, stage / "mixed_trace.csv")
        plot_single_job(stage / "single_job.png", single)
        plot_sensitivity(stage / "sensitivity.png", sensitivity, CoRunCosts().dispatch_overhead_ms)
        plot_cluster(stage / "cluster.png", cluster)
    print_summary(fidelity, cluster)
    print(f"wrote {args.out}")
    return 0


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _log_run(done: int, total: int, record: Mapping[str, Any], elapsed_s: float) -> None:
    params = record["params"]
    outcome = f" FAILED: {record['error']}" if record["error"] else ""
    print(
        f"rap cluster [{done}/{total}] {params['trace']}, {params['policy']}, "
        f"seed {params['seed']}{outcome} ({elapsed_s:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


# -- single job -------------------------------------------------------------------------


def single_job_rows(
    profiles: Mapping[ProfileKey, DlrmProfile], model: CoRunModel
) -> list[dict[str, Any]]:
    rows = []
    for (plan, gpus, batch), profile in sorted(profiles.items()):
        if batch != REFERENCE_BATCH:
            continue
        ideal = model.iteration_ms(profile, Mode.IDEAL, None)
        for mode in SINGLE_JOB_MODES:
            ms = model.iteration_ms(profile, mode, None)
            rows.append(
                {
                    "plan": plan,
                    "num_gpus": gpus,
                    "mode": mode.value,
                    "iteration_ms": round(ms, 4),
                    "throughput_ratio_vs_ideal": round(ideal / ms, 5),
                }
            )
    return rows


def fidelity_rows(
    profiles: Mapping[ProfileKey, DlrmProfile], model: CoRunModel
) -> list[dict[str, Any]]:
    rows = []
    for (plan, gpus, batch), profile in sorted(profiles.items()):
        ms = {mode: model.iteration_ms(profile, mode, None) for mode in SINGLE_JOB_MODES}
        rap = ms[Mode.RAP]
        rows.append(
            {
                "plan": plan,
                "num_gpus": gpus,
                "batch": batch,
                "extrapolated": profile.extrapolated,
                **{f"{mode.value}_ms": round(value, 4) for mode, value in ms.items()},
                "speedup_vs_sequential": round(ms[Mode.SEQUENTIAL] / rap, 4),
                "speedup_vs_naive": round(ms[Mode.NAIVE] / rap, 4),
                "speedup_vs_cpu": round(ms[Mode.CPU] / rap, 2),
                "below_ideal_pct": round(100.0 * (1.0 - ms[Mode.IDEAL] / rap), 3),
            }
        )
    return rows


def sensitivity_rows(measured: Sequence[DlrmProfile]) -> list[dict[str, Any]]:
    """RAP's speedup over sequential as δ moves, everything else at its default."""
    deltas = sorted({*SENSITIVITY_DELTAS_MS, CoRunCosts().dispatch_overhead_ms})
    rows = []
    for delta in deltas:
        model = CoRunModel(CoRunCosts(dispatch_overhead_ms=delta))
        speedups = [
            model.iteration_ms(p, Mode.SEQUENTIAL, None) / model.iteration_ms(p, Mode.RAP, None)
            for p in measured
        ]
        naive = [
            model.iteration_ms(p, Mode.NAIVE, None) / model.iteration_ms(p, Mode.RAP, None)
            for p in measured
        ]
        rows.append(
            {
                "dispatch_overhead_ms": delta,
                "mean_speedup_vs_sequential": round(statistics.mean(speedups), 4),
                "min_speedup_vs_sequential": round(min(speedups), 4),
                "max_speedup_vs_sequential": round(max(speedups), 4),
                "mean_speedup_vs_naive": round(statistics.mean(naive), 4),
            }
        )
    return rows


def calibration_report(measured: Sequence[DlrmProfile]) -> dict[str, Any]:
    costs = CoRunCosts()
    return {
        "profiles": len(measured),
        "corun_overhead": {
            "value": costs.corun_overhead,
            "derived": corun_overhead_for_gap(PAPER_GAP_BELOW_IDEAL),
            "from": f"1/(1 - {PAPER_GAP_BELOW_IDEAL}) - 1 (paper: RAP 3.24 % below ideal)",
        },
        "dispatch_overhead_ms": {
            "value": costs.dispatch_overhead_ms,
            "derived": calibrate_dispatch_overhead(measured),
            "from": f"median over profiles of the delta giving {PAPER_SPEEDUP_VS_SEQUENTIAL}x "
            "sequential/RAP",
        },
        "cpu_core_ms_per_kernel_ms": {
            "value": costs.cpu_core_ms_per_kernel_ms,
            "derived": calibrate_cpu_factor(measured),
            "from": f"median of {PAPER_SPEEDUP_VS_CPU} * RAP * {PAPER_CPU_WORKERS_PER_GPU} "
            "workers / max unfused ms",
        },
        "defaults": asdict(costs),
    }


# -- output ----------------------------------------------------------------------------------


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def plot_single_job(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    configs = sorted({(r["plan"], r["num_gpus"]) for r in rows})
    modes = [m.value for m in SINGLE_JOB_MODES]
    ratio = {(r["plan"], r["num_gpus"], r["mode"]): r["throughput_ratio_vs_ideal"] for r in rows}
    fig, ax = subplots(figsize=(11, 4.5))
    width = 0.8 / len(modes)
    x = np.arange(len(configs))
    for i, mode in enumerate(modes):
        values = [ratio[(p, g, mode)] for p, g in configs]
        ax.bar(x + (i - len(modes) / 2 + 0.5) * width, values, width, label=mode)
    ax.set_xticks(x, [f"plan {p}\n{g} GPUs" for p, g in configs], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("throughput / ideal (log)")
    ax.set_title("DLRM iteration throughput per preprocessing mode (batch 4096; plans 2-3 extrap.)")
    ax.legend(ncols=len(modes), fontsize=8, loc="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_sensitivity(path: Path, rows: Sequence[Mapping[str, Any]], default_ms: float) -> None:
    delta = [r["dispatch_overhead_ms"] for r in rows]
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(delta, [r["mean_speedup_vs_sequential"] for r in rows], marker="o", label="mean")
    ax.fill_between(
        delta,
        [r["min_speedup_vs_sequential"] for r in rows],
        [r["max_speedup_vs_sequential"] for r in rows],
        alpha=0.25,
        label="min-max over configurations",
    )
    ax.axhline(PAPER_SPEEDUP_VS_SEQUENTIAL, color="k", linestyle="--", label="paper 1.99x")
    ax.axvline(default_ms, color="grey", linestyle=":", label=f"calibrated {default_ms} ms")
    ax.set_xlabel("dispatch + hand-off overhead per kernel, δ (ms)")
    ax.set_ylabel("RAP speedup over sequential")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_cluster(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    rates = sorted({r["rate_per_h"] for r in rows})
    fig, axes = subplots(1, len(rates), figsize=(6 * len(rates), 4.5), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        subset = [r for r in rows if r["rate_per_h"] == rate]
        labels = [_label(r) for r in subset]
        x = np.arange(len(subset))
        ax.bar(x - 0.2, [r["avg_jct_dlrm_h"] for r in subset], 0.4, label="DLRM JCT")
        ax.bar(x + 0.2, [r["avg_jct_other_h"] for r in subset], 0.4, label="other JCT")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean JCT (h)")
        ax.set_title(f"{rate:g} jobs/h on {CLUSTER_GPUS} A100")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _label(row: Mapping[str, Any]) -> str:
    slowdown = row["host_slowdown"]
    return row["policy"] if slowdown == "" else f"{row['policy']}\nε_B={slowdown:g}"


def print_summary(
    fidelity: Sequence[Mapping[str, Any]], cluster: Sequence[Mapping[str, Any]]
) -> None:
    measured = [r for r in fidelity if not r["extrapolated"]]
    speedup = statistics.mean(r["speedup_vs_sequential"] for r in measured)
    gap = statistics.mean(r["below_ideal_pct"] for r in measured)
    print(f"RAP vs sequential (plans 0-1, mean): {speedup:.2f}x; below ideal {gap:.2f} %")
    for row in cluster:
        print(
            f"  {row['rate_per_h']:g}/h {row['policy']:>16s} ε_B={row['host_slowdown']!s:6s} "
            f"JCT dlrm {row['avg_jct_dlrm_h']:.1f} h other {row['avg_jct_other_h']:.1f} h "
            f"util {row['gpu_util']:.3f}"
        )
