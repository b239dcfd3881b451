"""Benchmark: Sia's policy time per round at 64 and 2,048 GPUs, and a full newtrace run.

Solve time: a Sia workload on `sia-64` at scale k (k = 1 → 64 GPUs, k = 32 → 2,048 GPUs),
its trace scaled with the cluster as in Sia's scalability study (every job repeated k
times at its submit time). The simulation runs up to `--hours` of simulated time; the
wall time of every scheduling pass (the engine times `policy.schedule`) is collected.
Targets: median <= 100 ms at 64 GPUs, <= 0.5 s at 2,048 GPUs (paper: 96 ms, ~1 s).
Both the wall time of each pass and its CPU time are reported (the machine is shared).

Full run: one newtrace workload (960 jobs over 48 h, 60 s rounds) with Sia to the end.
Target: <= 60 s wall on 2 cores.

    python benchmarks/sia_solve_time.py solve --workload W.csv --scale 1 --hours 8
    python benchmarks/sia_solve_time.py full --workload newtrace/workload-1.csv --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

from policies import Context, JobSpec, Policy, SchedulingResult, Snapshot, make_policy
from simulator.clusters import named_cluster
from simulator.engine import EngineOptions, Simulation
from traces.sia import read_jobs


def scaled_jobs(path: str, scale: int) -> list[JobSpec]:
    jobs = read_jobs(path)
    return [
        dataclasses.replace(job, id=f"{job.id}#{copy}") if scale > 1 else job
        for job in jobs
        for copy in range(scale)
    ]


class CpuTimed:
    """Delegates to a policy and records the CPU seconds of each `schedule` call: on a
    shared machine the engine's wall-clock pass times also count other processes."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.round_s = inner.round_s
        self.name = inner.name
        self.cpu_s: list[float] = []

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        started = time.process_time()
        result = self.inner.schedule(snapshot, ctx)
        self.cpu_s.append(time.process_time() - started)
        return result

    def describe(self) -> dict[str, object]:
        return self.inner.describe()


def solve_times(path: str, scale: int, hours: float) -> dict[str, float]:
    jobs = scaled_jobs(path, scale)
    options = EngineOptions(startup_delay=True, horizon_s=hours * 3600)
    policy = CpuTimed(make_policy("sia"))
    sim = Simulation(named_cluster("sia-64", scale), jobs, policy, options)  # type: ignore[arg-type]
    started = time.perf_counter()
    recorder = sim.run()
    wall = time.perf_counter() - started
    passes = np.array([p[1] for p in recorder.passes], dtype=float) * 1000
    cpu = np.array(policy.cpu_s) * 1000
    active = np.array([int(p[2]) + int(p[3]) for p in recorder.passes])  # type: ignore[call-overload]
    return {
        "gpus": sim.cluster.state.total_gpus,
        "jobs": len(jobs),
        "rounds": passes.size,
        "median_ms": float(np.median(passes)),
        "p95_ms": float(np.percentile(passes, 95)),
        "cpu_median_ms": float(np.median(cpu)),
        "cpu_p95_ms": float(np.percentile(cpu, 95)),
        "max_ms": float(passes.max()),
        "mean_active_jobs": float(active.mean()),
        "max_active_jobs": int(active.max()),
        "wall_s": wall,
    }


def full_run(path: str) -> dict[str, float]:
    jobs = read_jobs(path)
    sim = Simulation(
        named_cluster("sia-64"), jobs, make_policy("sia"), EngineOptions(startup_delay=True)
    )
    wall, cpu = time.perf_counter(), time.process_time()
    recorder = sim.run()
    summary = recorder.summary()
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "completed": float(summary["completed"]),
        "avg_jct_h": float(summary["avg_jct_s"]) / 3600,
        "rounds": float(len(recorder.passes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("solve", "full"))
    parser.add_argument("--workload", required=True)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results = []
    for repeat in range(args.repeats):
        if args.mode == "solve":
            result = solve_times(args.workload, args.scale, args.hours)
        else:
            result = full_run(args.workload)
        results.append(result)
        print(f"repeat {repeat}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    if args.repeats > 1:
        keys = results[0].keys()
        medians = {k: statistics.median(r[k] for r in results) for k in keys}
        print("median: " + ", ".join(f"{k}={v:.4g}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
