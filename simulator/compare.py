"""Several policies on one trace: one run directory each, a summary table and a plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulator.plotting import subplots
from simulator.run import RunResult
from traces.outputs import staged_file

TABLE_KEYS = (
    "policy",
    "jobs",
    "completed",
    "avg_jct_s",
    "p50_jct_s",
    "p99_jct_s",
    "avg_queue_delay_s",
    "makespan_s",
    "gpu_util",
    "restarts",
)


def write_comparison(out_dir: Path, results: Sequence[RunResult]) -> None:
    """`summary.csv` and `compare.png` beside the per-policy run directories (files of
    those names are replaced; neither is if either fails)."""
    with (
        staged_file(out_dir / "summary.csv") as table,
        staged_file(out_dir / "compare.png") as plot,
    ):
        write_summary_csv(table, [r.summary for r in results])
        plot_comparison(plot, results)


def write_summary_csv(path: Path, summaries: Sequence[dict[str, Any]]) -> None:
    keys = list(TABLE_KEYS) + sorted({k for s in summaries for k in s} - set(TABLE_KEYS))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for summary in summaries:
            writer.writerow(summary)


def plot_comparison(path: Path, results: Sequence[RunResult]) -> None:
    fig, (cdf, util, bars) = subplots(1, 3, figsize=(15, 4.2))
    colors = [f"C{i % 10}" for i in range(len(results))]  # one per policy, in all three
    for result, color in zip(results, colors, strict=True):
        name = str(result.summary["policy"])
        jct = np.sort([row[5] for row in result.recorder.jobs if row[12] == "completed"])
        if jct.size:
            cdf.plot(jct / 3600, np.arange(1, jct.size + 1) / jct.size, label=name, color=color)
        times = np.array([row[0] for row in result.recorder.timeline]) / 3600
        alloc = np.array([row[1] for row in result.recorder.timeline])
        util.step(times, alloc, where="post", label=name, linewidth=0.8, color=color)
    cdf.set(xscale="log", xlabel="JCT (h)", ylabel="fraction of jobs", title="JCT CDF")
    util.set(xlabel="time (h)", ylabel="allocated GPU %", title="Allocation over time")
    names = [str(r.summary["policy"]) for r in results]
    bars.bar(names, [float(r.summary["avg_jct_s"]) / 3600 for r in results], color=colors)
    bars.set(ylabel="average JCT (h)", title="Average JCT")
    bars.tick_params(axis="x", rotation=30)
    cdf.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table of the main summary keys, one row per run."""
    rows = [[_fmt(s.get(k, "")) for k in TABLE_KEYS] for s in summaries]
    widths = [max(len(k), *(len(r[i]) for r in rows)) for i, k in enumerate(TABLE_KEYS)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(TABLE_KEYS, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def format_caveats(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """What the table's averages leave out, a line per run that left jobs out: jobs
    rejected (no node could take them even with the cluster empty) and jobs still
    unfinished when the run ended. Averages cover completed jobs only."""
    lines = []
    for summary in summaries:
        rejected, unfinished = int(summary.get("rejected", 0)), int(summary.get("unfinished", 0))
        parts = []
        if rejected:
            parts.append(f"{rejected} rejected (they fit no node, even with the cluster empty)")
        if unfinished:
            parts.append(f"{unfinished} unfinished when the run ended")
        if parts:
            jobs = summary.get("jobs", "?")
            lines.append(f"{summary.get('policy', '')}: of {jobs} jobs, {' and '.join(parts)}")
    return lines


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)
