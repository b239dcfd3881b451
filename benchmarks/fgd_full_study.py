"""The FGD paper's full study: 6 policies × 17 openb traces × 10 seeds (1,020 runs)
through `gpufleet experiment fgd-inflation`, timed end to end (target <= 30 min on
2 cores), then the table of unallocated GPUs at 100% arrived per trace and policy.

    python benchmarks/fgd_full_study.py --out /tmp/fgd-study [--workers 2] [--seeds 42-51]
        [--policies fgd,bestfit,packing,clustering,dotprod,random]

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
    args = parser.parse_args()
    argv = ["experiment", "fgd-inflation", "--nodes", str(OPENB / "openb_node_list_gpu_node.csv")]
    for name in TRACES:
        argv += ["--pods", str(OPENB / f"openb_pod_list_{name}.csv")]
    argv += ["--policies", args.policies, "--seeds", args.seeds, "--out", args.out]
    argv += ["--workers", args.workers]
    start = time.perf_counter()
    status = gpufleet(argv)
    print(f"exit {status}; wall {time.perf_counter() - start:.0f} s")
    if status == 0:
        print_table(Path(args.out) / "summary.csv", args.policies.split(","))


def print_table(summary: Path, policies: list[str]) -> None:
    """Markdown: one row per trace, mean ± std of unallocated GPUs per policy."""
    with summary.open() as handle:
        rows = list(csv.DictReader(handle))
    cell = {
        (r["trace"], r["policy"]): f"{float(r['unallocated_gpus_mean']):.0f} "
        f"± {float(r['unallocated_gpus_std']):.0f}"
        for r in rows
    }
    print("| trace | " + " | ".join(policies) + " |")
    print("|---" * (len(policies) + 1) + "|")
    for trace in TRACES:
        print(f"| {trace} | " + " | ".join(cell.get((trace, p), "") for p in policies) + " |")


if __name__ == "__main__":
    main()
