"""Benchmark: 200 streams x one week of 10-minute windows (201,600 retraining windows) on
the 64-GPU Sia cluster with an accuracy-aware allocator. Target: <= 60 s wall on 2 cores.

    python benchmarks/continual_week.py [--policy thief] [--repeats 3] [--streams 200]

Prints wall and CPU seconds per repeat and their medians, plus the run's summary.
"""

from __future__ import annotations

import argparse
import statistics
import time

from policies import make_policy
from simulator.clusters import named_cluster
from simulator.continual import ContinualRun
from traces.continual import ContinualSpec, generate_streams

WEEK_WINDOWS = 7 * 24 * 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="thief")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--windows", type=int, default=WEEK_WINDOWS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    streams = generate_streams(ContinualSpec(streams=args.streams, windows=args.windows), args.seed)
    nodes = named_cluster("sia-64")
    walls, cpus = [], []
    summary: dict[str, float | int] = {}
    for repeat in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run = ContinualRun(nodes, streams, make_policy(args.policy))
        run.run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        summary = run.summary()
        print(f"repeat {repeat}: wall {walls[-1]:.1f} s, cpu {cpus[-1]:.1f} s", flush=True)
    print(
        f"{args.policy}: {args.streams} streams x {args.windows} windows, "
        f"{summary['retrain_jobs']} retraining jobs; median wall {statistics.median(walls):.1f} s, "
        f"median cpu {statistics.median(cpus):.1f} s"
    )
    print({k: round(float(v), 4) for k, v in summary.items()})


if __name__ == "__main__":
    main()
