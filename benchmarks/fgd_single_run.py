"""Wall time of one inflation run (default openb trace inflated to 130%, ~10.8k tasks,
1,213 GPU nodes) per policy, in-process, median over `--repeat` runs. Target on a
2-core machine: FGD <= 10 s.

    python benchmarks/fgd_single_run.py [--repeat 5] [--policies fgd,fgd:mode=artifact]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from simulator.experiments.fgd_inflation import CURVE_COLUMNS, load_trace, run_inflation
from traces.openb import read_nodes

DATA = Path(os.environ.get("GPUFLEET_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
OPENB = DATA / "alibaba-gpu-2023"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--policies", default="fgd,fgd:mode=artifact,bestfit,random")
    args = parser.parse_args()
    trace = load_trace(OPENB / "openb_pod_list_default.csv")
    nodes = read_nodes(OPENB / "openb_node_list_gpu_node.csv", gpu_only=True)
    print("| policy | median wall s | min wall s | median CPU s | unallocated GPUs at 100% |")
    print("|---|---|---|---|---|")
    for label in args.policies.split(","):
        walls, cpus, unallocated = [], [], []
        for seed in range(42, 42 + args.repeat):
            start = time.perf_counter()
            output = run_inflation(trace, nodes, label, seed, 1.3)
            walls.append(time.perf_counter() - start)
            cpus.append(output.cpu_seconds)
            rows = [dict(zip(CURVE_COLUMNS, r, strict=True)) for r in output.curve]
            unallocated.append(
                next(float(r["unallocated_gpus"]) for r in rows if r["arrived_pct"] == 100)  # type: ignore[arg-type]
            )
        print(
            f"| {label} | {statistics.median(walls):.2f} | {min(walls):.2f} "
            f"| {statistics.median(cpus):.2f} | {statistics.mean(unallocated):.1f} (mean) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
