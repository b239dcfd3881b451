"""A forecast's answer: per policy, the p50/p90 start and finish of every pending job,
queue length and allocation over the horizon and CTJ deadline misses, as files, a table
and one plot.

Files of the run directory: `predictions.csv` (one row per policy and job),
`timeline.csv` (per policy: queue length and allocated GPU % on a grid, medians over the
samples), `summary.json` (per policy), `config.json`, `snapshot.json` (the input) and
`forecast.png` (predicted start per job, per policy).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.windows import meets_deadline
from simulator.plotting import subplots
from simulator.whatif.forecast import Plan, SampleRun
from traces.outputs import output_directory
from traces.snapshot import ClusterSnapshot, write_snapshot

PREDICTION_COLUMNS = (
    "policy",
    "job_id",
    "kind",
    "source",
    "start_p50_s",
    "start_p90_s",
    "finish_p50_s",
    "finish_p90_s",
    "deadline_s",
    "miss_fraction",
    "note",
)
"""Times in seconds after the snapshot; empty: not within the horizon (at that percentile).
`note` says why a job never starts (`NEVER_FITS`)."""

NEVER_FITS = "fits no node, even with the cluster empty"


@dataclass(frozen=True)
class PolicyForecast:
    policy: str
    samples: int
    start: np.ndarray
    """Samples × jobs, inf where the job did not start within the horizon."""
    finish: np.ndarray
    queue: np.ndarray
    """Median queue length on the grid."""
    alloc_pct: np.ndarray

    def start_at(self, q: float) -> np.ndarray:
        return _percentile(self.start, q)

    def finish_at(self, q: float) -> np.ndarray:
        return _percentile(self.finish, q)


def _percentile(values: np.ndarray, q: float) -> np.ndarray:
    # An observed value, never an interpolation (which turns inf into nan).
    return np.percentile(values, q, axis=0, method="inverted_cdf")


def combine(runs: Sequence[SampleRun], samples: int) -> list[PolicyForecast]:
    """Runs grouped by policy, in the order given; a single run stands for all samples
    (it had no uncertain time)."""
    names = list(dict.fromkeys(run.policy for run in runs))
    out = []
    for name in names:
        mine = [run for run in runs if run.policy == name]
        out.append(
            PolicyForecast(
                name,
                samples if len(mine) == 1 else len(mine),
                np.vstack([run.start for run in mine]),
                np.vstack([run.finish for run in mine]),
                np.median(np.vstack([run.queue for run in mine]), axis=0),
                np.median(np.vstack([run.alloc_pct for run in mine]), axis=0),
            )
        )
    return out


def prediction_rows(plan: Plan, forecasts: Sequence[PolicyForecast]) -> list[dict[str, Any]]:
    items = plan.forecast_items
    never = set(plan.never_fits)
    rows = []
    for forecast in forecasts:
        starts = forecast.start_at(50), forecast.start_at(90)
        finishes = forecast.finish_at(50), forecast.finish_at(90)
        for j, item in enumerate(items):
            deadline = item.deadline_s
            rows.append(
                {
                    "policy": forecast.policy,
                    "job_id": item.spec.id,
                    "kind": item.kind,
                    "source": str(item.remaining.source),
                    "start_p50_s": _cell(starts[0][j]),
                    "start_p90_s": _cell(starts[1][j]),
                    "finish_p50_s": _cell(finishes[0][j]),
                    "finish_p90_s": _cell(finishes[1][j]),
                    "deadline_s": "" if deadline is None else deadline,
                    "miss_fraction": _misses(forecast.finish[:, j], deadline, plan.horizon_s),
                    "note": NEVER_FITS if item.spec.id in never else "",
                }
            )
    return rows


def _misses(finish: np.ndarray, deadline: float | None, horizon_s: float) -> object:
    """Share of samples that do not meet the deadline (the lifecycle's rule,
    `policies.windows.meets_deadline`); unknown ("") when the deadline lies past the
    horizon and the job did not finish in it."""
    if deadline is None:
        return ""
    if deadline > horizon_s and np.isinf(finish).any():
        return ""
    late = [not meets_deadline(float(f), deadline) for f in finish]
    return round(float(np.mean(late)), 4)


def _cell(value: float) -> object:
    return "" if math.isinf(value) else round(float(value), 3)


def summaries(plan: Plan, forecasts: Sequence[PolicyForecast]) -> list[dict[str, Any]]:
    items = plan.forecast_items
    pending = [j for j, item in enumerate(items) if item.kind != "ctj-window"]
    windows = [j for j, item in enumerate(items) if item.deadline_s is not None]
    out = []
    for f in forecasts:
        start50 = f.start_at(50)
        started = start50[pending][np.isfinite(start50[pending])]
        finish50 = f.finish_at(50)
        late = [j for j in windows if not meets_deadline(finish50[j], items[j].deadline_s or 0.0)]
        out.append(
            {
                "policy": f.policy,
                "samples": f.samples,
                "jobs": len(pending),
                "started_p50": int(started.size),
                "mean_start_p50_s": round(float(started.mean()), 3) if started.size else "",
                "last_start_p50_s": round(float(started.max()), 3) if started.size else "",
                "max_queue": int(f.queue.max()) if f.queue.size else 0,
                "mean_alloc_pct": round(float(f.alloc_pct.mean()), 2),
                "ctj_windows": len(windows),
                "ctj_misses_p50": len(late),
            }
        )
    return out


SUMMARY_KEYS = (
    "policy",
    "samples",
    "jobs",
    "started_p50",
    "mean_start_p50_s",
    "last_start_p50_s",
    "max_queue",
    "mean_alloc_pct",
    "ctj_windows",
    "ctj_misses_p50",
)


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    table = [[str(r[k]) for k in SUMMARY_KEYS] for r in rows]
    widths = [max(len(k), *(len(t[i]) for t in table)) for i, k in enumerate(SUMMARY_KEYS)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(SUMMARY_KEYS, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(t, widths, strict=True)) for t in table]
    return "\n".join(lines)


def write_forecast(
    out_dir: Path,
    snapshot: ClusterSnapshot,
    plan: Plan,
    forecasts: Sequence[PolicyForecast],
    config: dict[str, Any],
    force: bool = False,
) -> Path:
    rows = prediction_rows(plan, forecasts)
    with output_directory(out_dir, "whatif", force) as stage:
        _write_csv(stage / "predictions.csv", PREDICTION_COLUMNS, rows)
        grid = np.linspace(0.0, plan.horizon_s, len(forecasts[0].queue))
        timeline = [
            {"policy": f.policy, "time_s": round(float(t), 3), "queue": q, "alloc_gpu_pct": a}
            for f in forecasts
            for t, q, a in zip(grid, f.queue.tolist(), f.alloc_pct.tolist(), strict=True)
        ]
        _write_csv(stage / "timeline.csv", ("policy", "time_s", "queue", "alloc_gpu_pct"), timeline)
        summary = {"policies": summaries(plan, forecasts), "horizon_s": plan.horizon_s}
        (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (stage / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_snapshot(snapshot, stage / "snapshot.json")
        plot_starts(stage / "forecast.png", plan, forecasts)
    return out_dir


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def plot_starts(path: Path, plan: Plan, forecasts: Sequence[PolicyForecast]) -> None:
    """Predicted start of each job (queue order), p50 with a bar up to p90, per policy;
    jobs not started within the horizon sit on the horizon line. Seconds, minutes or
    hours, whichever suits the latest start."""
    fig, ax = subplots(1, 1, figsize=(10, 4.5))
    count = len(plan.forecast_items)
    x = np.arange(count)
    capped = [np.minimum(f.start_at(90), plan.horizon_s) for f in forecasts]
    latest = max((float(c.max()) for c in capped if c.size), default=0.0)
    unit, scale = next((u, s) for u, s in _UNITS if latest <= 2 * s * 60 or u == "h")
    for k, f in enumerate(forecasts):
        p50 = np.minimum(f.start_at(50), plan.horizon_s) / scale
        shift = (k - (len(forecasts) - 1) / 2) * 0.2
        ax.vlines(x + shift, p50, capped[k] / scale, color=f"C{k}", alpha=0.4, linewidth=1)
        size = 3 if count > 200 else 5
        ax.plot(x + shift, p50, ".", color=f"C{k}", markersize=size, label=f.policy)
    if latest >= plan.horizon_s:
        ax.axhline(plan.horizon_s / scale, color="grey", linestyle=":", label="horizon")
    ax.set(
        xlabel="job (queue order, then CTJ windows)", ylabel=f"predicted start ({unit} from now)"
    )
    ax.set_title("Predicted start per job: p50 (dot) to p90 (bar)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


_UNITS = (("s", 1.0), ("min", 60.0), ("h", 3600.0))
