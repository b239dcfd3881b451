"""The FGD paper's full study: 6 policies × 17 openb traces × 10 seeds (1,020 runs)
through `gpufleet experiment fgd-inflation`, timed end to end (target <= 30 min on
2 cores), then the table of unallocated GPUs at 100% arrived per trace and policy.

    python benchmarks/fgd_full_study.py --out /tmp/fgd-study [--workers 2] [--seeds 42-51]
        [--policies fgd,bestfit,packing,clustering,dotprod,random] [--upstream CSV]

`--upstream` takes the artifact's published `analysis_allo_discrete.csv`
(hkust-adsl/kubernetes-scheduler-simulator, experiments/analysis/expected_results/);
each cell then reads "ours / upstream (difference %)", upstream being the mean over its
seeds of total_gpus · (1 − allocated % at 100% arrived / 100). Every FGD label is
compared with the artifact's FGD.

Takes up to half an hour: run it in the background and read the log.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--policies", default="fgd,bestfit,packing,clustering,dotprod,random")
    parser.add_argument("--upstream", type=Path, help="the artifact's analysis_allo_discrete.csv")
    args = parser.parse_args()
    upstream = upstream_means(args.upstream) if args.upstream else {}
    argv = ["experiment", "fgd-inflation", "--nodes", str(OPENB / "openb_node_list_gpu_node.csv")]
    for name in TRACES:
        argv += ["--pods", str(OPENB / f"openb_pod_list_{name}.csv")]
    argv += ["--policies", args.policies, "--seeds", args.seeds, "--out", args.out]
    argv += ["--workers", args.workers]
    start = time.perf_counter()
    status = gpufleet(argv)
    print(f"exit {status}; wall {time.perf_counter() - start:.0f} s")
    if status == 0:
        print_table(Path(args.out) / "summary.csv", args.policies.split(","), upstream)


UPSTREAM_POLICIES = {
    "01-Random": "random",
    "02-DotProd": "dotprod",
    "03-GpuClustering": "clustering",
    "04-GpuPacking": "packing",
    "05-BestFit": "bestfit",
    "06-FGD": "fgd",
}


def upstream_means(path: Path) -> dict[tuple[str, str], float]:
    """(trace, policy name) → the artifact's mean unallocated GPUs at 100% arrived."""
    runs: dict[tuple[str, str], list[float]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            trace = row["workload"].removeprefix("openb_pod_list_")
            policy = UPSTREAM_POLICIES[row["sc_policy"]]
            unallocated = float(row["total_gpus"]) * (1 - float(row["100"]) / 100)
            runs.setdefault((trace, policy), []).append(unallocated)
    return {key: sum(values) / len(values) for key, values in runs.items()}


def print_table(summary: Path, policies: list[str], upstream: dict[tuple[str, str], float]) -> None:
    """Markdown: one row per trace, per policy the mean ± std of unallocated GPUs, or
    with `upstream` the mean beside the artifact's and the difference in %."""
    with summary.open() as handle:
        rows = list(csv.DictReader(handle))
    cell = {}
    for r in rows:
        mean = float(r["unallocated_gpus_mean"])
        reference = upstream.get((r["trace"], r["policy"].split(":")[0]))
        cell[(r["trace"], r["policy"])] = (
            f"{mean:.0f} / {reference:.0f} ({100 * (mean - reference) / reference:+.1f}%)"
            if reference
            else f"{mean:.0f} ± {float(r['unallocated_gpus_std']):.0f}"
        )
    print("| trace | " + " | ".join(policies) + " |")
    print("|---" * (len(policies) + 1) + "|")
    for trace in TRACES:
        print(f"| {trace} | " + " | ".join(cell.get((trace, p), "") for p in policies) + " |")


if __name__ == "__main__":
    main()
