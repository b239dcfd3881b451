"""Replay the 82k-job Philly trace on a 2,048-GPU cluster with FIFO and LAS.

Each policy runs in a fresh process (so peak RSS is its own) `--repeat` times; the
median wall and CPU time (process user + system, which is what the wall time would be
on an idle machine) and the peak memory are printed as a Markdown table row. Target on a
2-core machine: FIFO <= 10 s and <= 1 GiB; LAS <= 30 s.

    python benchmarks/philly_replay.py [--repeat 3] [--policies fifo,las]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("GPUFLEET_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
TRACE = DATA / "sia" / "traces" / "philly.csv"


def one_run(policy: str) -> dict[str, float]:
    from policies import make_policy
    from simulator.engine import Simulation
    from traces import philly
    from traces.synthetic import homogeneous_cluster

    start = time.perf_counter()
    jobs = philly.read_jobs(TRACE)
    loaded = time.perf_counter()
    sim = Simulation(homogeneous_cluster(2048), jobs, make_policy(policy))
    summary = sim.run().summary()
    done = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "load_s": loaded - start,
        "simulate_s": done - loaded,
        "wall_s": done - start,
        "peak_mib": usage.ru_maxrss / 1024,
        "completed": summary["completed"],
        "avg_jct_s": summary["avg_jct_s"],
        "passes": sim.pass_count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--policies", default="fifo,las")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child)))
        return
    if not TRACE.exists():
        sys.exit(f"missing {TRACE}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    columns = ("median wall s", "CPU s", "simulate s", "load s", "peak MiB", "completed")
    print("| policy | " + " | ".join(columns) + " | avg JCT h |")
    print("|---|---|---|---|---|---|---|---|")
    for policy in args.policies.split(","):
        runs = [
            json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--child", policy],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for _ in range(args.repeat)
        ]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {policy} | {med['wall_s']:.2f} | {med['cpu_s']:.2f} | {med['simulate_s']:.2f} "
            f"| {med['load_s']:.2f} "
            f"| {max(r['peak_mib'] for r in runs):.0f} | {int(med['completed'])} "
            f"| {med['avg_jct_s'] / 3600:.2f} |"
        )


if __name__ == "__main__":
    main()
