"""The FGD paper's full study: 6 policies × 17 openb traces × 10 seeds (1,020 runs)
through `gpufleet experiment fgd-inflation`, timed end to end (target <= 30 min on
2 cores), then the table of unallocated GPUs at 100% arrived per trace and policy.

    python benchmarks/fgd_full_study.py --out /tmp/fgd-study [--workers 2] [--seeds 42-51]
        [--policies fgd,bestfit,packing,clustering,dotprod,random] [--upstream CSV]
        [--tables-only]

`--upstream` takes the artifact's published `analysis_allo_discrete.csv`
(hkust-adsl/kubernetes-scheduler-simulator, experiments/analysis/expected_results/);
each cell then reads "ours / upstream (difference %)", upstream being the mean over its
seeds of total_gpus · (1 − allocated % at 100% arrived / 100). Every FGD label is
compared with the artifact's FGD, and a second table gives, per trace and FGD label,
both sides' seed standard deviations and the 95% interval of the difference of means
(Welch: the two simulators draw different random numbers, so seeds are not paired).

Takes up to half an hour: run it in the background and read the log.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from scipy import stats

from gpufleet.cli import main as gpufleet

DATA = Path(os.environ.get("GPUFLEET_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
OPENB = DATA / "alibaba-gpu-2023"
TRACES = (
    "default",
    "cpu050",
    "cpu100",
    "cpu200",
    "cpu250",
    "gpushare40",
    "gpushare60",
    "gpushare80",
    "gpushare100",
    "multigpu20",
    "multigpu30",
    "multigpu40",
    "multigpu50",
    "gpuspec10",
    "gpuspec20",
    "gpuspec25",
    "gpuspec33",
)


Runs = dict[tuple[str, str], list[float]]
"""(trace, policy) → unallocated GPUs at 100% arrived, one value per seed."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--policies", default="fgd,bestfit,packing,clustering,dotprod,random")
    parser.add_argument("--upstream", type=Path, help="the artifact's analysis_allo_discrete.csv")
    parser.add_argument(
        "--tables-only", action="store_true", help="print the tables of a finished --out"
    )
    args = parser.parse_args()
    upstream = upstream_runs(args.upstream) if args.upstream else {}
    if args.tables_only:
        print_tables(Path(args.out), args.policies.split(","), upstream)
        return
    argv = ["experiment", "fgd-inflation", "--nodes", str(OPENB / "openb_node_list_gpu_node.csv")]
    for name in TRACES:
        argv += ["--pods", str(OPENB / f"openb_pod_list_{name}.csv")]
    argv += ["--policies", args.policies, "--seeds", args.seeds, "--out", args.out]
    argv += ["--workers", args.workers]
    start = time.perf_counter()
    status = gpufleet(argv)
    print(f"exit {status}; wall {time.perf_counter() - start:.0f} s")
    if status == 0:
        print_tables(Path(args.out), args.policies.split(","), upstream)


def print_tables(out: Path, policies: list[str], upstream: Runs) -> None:
    print_table(out / "summary.csv", policies, upstream)
    if upstream:
        print_fgd_intervals(out / "curves.csv", policies, upstream)


UPSTREAM_POLICIES = {
    "01-Random": "random",
    "02-DotProd": "dotprod",
    "03-GpuClustering": "clustering",
    "04-GpuPacking": "packing",
    "05-BestFit": "bestfit",
    "06-FGD": "fgd",
}


def upstream_runs(path: Path) -> Runs:
    """The artifact's runs, keyed by (trace, our policy name)."""
    runs: Runs = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            trace = row["workload"].removeprefix("openb_pod_list_")
            policy = UPSTREAM_POLICIES[row["sc_policy"]]
            unallocated = float(row["total_gpus"]) * (1 - float(row["100"]) / 100)
            runs.setdefault((trace, policy), []).append(unallocated)
    return runs


def our_runs(curves: Path) -> Runs:
    """Our runs from `curves.csv`, keyed by (trace, policy label)."""
    runs: Runs = {}
    with curves.open() as handle:
        for row in csv.DictReader(handle):
            if row["arrived_pct"] == "100":
                runs.setdefault((row["trace"], row["policy"]), []).append(
                    float(row["unallocated_gpus"])
                )
    return runs


def difference_interval(
    ours: Sequence[float], theirs: Sequence[float], level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of `ours` minus mean of `theirs` and Welch's `level` interval around it."""
    interval = stats.ttest_ind(ours, theirs, equal_var=False).confidence_interval(level)
    difference = statistics.fmean(ours) - statistics.fmean(theirs)
    return difference, float(interval.low), float(interval.high)


def print_table(summary: Path, policies: list[str], upstream: Runs) -> None:
    """Markdown: one row per trace, per policy the mean ± std of unallocated GPUs, or
    with `upstream` the mean beside the artifact's and the difference in %."""
    with summary.open() as handle:
        rows = list(csv.DictReader(handle))
    cell = {}
    for r in rows:
        mean = float(r["unallocated_gpus_mean"])
        reference_runs = upstream.get((r["trace"], r["policy"].split(":")[0]))
        reference = statistics.fmean(reference_runs) if reference_runs else None
        cell[(r["trace"], r["policy"])] = (
            f"{mean:.0f} / {reference:.0f} ({100 * (mean - reference) / reference:+.1f}%)"
            if reference
            else f"{mean:.0f} ± {float(r['unallocated_gpus_std']):.0f}"
        )
    print("| trace | " + " | ".join(policies) + " |")
    print("|---" * (len(policies) + 1) + "|")
    for trace in TRACES:
        print(f"| {trace} | " + " | ".join(cell.get((trace, p), "") for p in policies) + " |")


def print_fgd_intervals(curves: Path, policies: list[str], upstream: Runs) -> None:
    """Markdown: per trace and FGD label, ours and the artifact's FGD (mean ± seed sd)
    and the difference of means in % of the artifact's with its 95% interval."""
    ours = our_runs(curves)
    labels = [p for p in policies if p.split(":")[0] == "fgd"]
    print("| trace | policy | ours mean ± sd | upstream mean ± sd | difference (95% interval) |")
    print("|---|---|---|---|---|")
    for trace in TRACES:
        theirs = upstream.get((trace, "fgd"))
        for label in labels:
            mine = ours.get((trace, label))
            if not theirs or not mine or len(mine) < 2:
                continue
            difference, low, high = difference_interval(mine, theirs)
            scale = 100 / statistics.fmean(theirs)
            print(
                f"| {trace} | {label} | {_mean_sd(mine)} | {_mean_sd(theirs)} | "
                f"{scale * difference:+.1f}% ({scale * low:+.1f}% to {scale * high:+.1f}%) |"
            )


def _mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


if __name__ == "__main__":
    main()
