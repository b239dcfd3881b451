"""One big simulation: a seeded synthetic trace of up to 1,000,000 jobs on up to 12,500
8-GPU nodes (100,000 GPUs, A100 and V100 in turn), replayed by FIFO, LAS, Best-fit and
FGD, timed end to end from the generated trace to the written run directory.

    python benchmarks/million_jobs.py series          # time vs jobs and vs nodes (FIFO)
    python benchmarks/million_jobs.py policies        # 1M jobs x 12.5k nodes per policy
    python benchmarks/million_jobs.py one --jobs N --nodes M --policy P

Every measurement runs in its own process, so its peak RSS is its own. Arrivals are
Poisson at an offered load of 0.7 of the cluster (mean job: 165,000 GPU-seconds at the
mix's speeds), so a bigger cluster gets proportionally more arrivals an hour and queues
stay comparable. `sim_s` covers the replay and writing jobs.parquet and timeline.parquet;
`gen_s`/`gen_cpu_s` is generating the trace. Wall and CPU seconds are both reported: the
machine is shared, and CPU seconds are what the run itself used; `load_1min` is the
1-minute load average at the start and the end of the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from policies import make_policy
from simulator.run import RunConfig, simulate
from traces.synthetic import SyntheticSpec, generate_jobs, mixed_cluster

MEAN_GPU_S = 165_000.0
OFFERED_LOAD = 0.7
JOB_SERIES = (100_000, 300_000, 1_000_000)
NODE_SERIES = (1_000, 4_000, 12_500)
NODE_SERIES_JOBS = 100_000
POLICIES = ("fifo", "las", "bestfit", "fgd")


def measure(jobs: int, nodes: int, policy: str) -> dict[str, object]:
    load_at_start = os.getloadavg()[0]
    start, start_cpu = time.perf_counter(), time.process_time()
    rate = OFFERED_LOAD * nodes * 8 * 3600 / MEAN_GPU_S
    trace = generate_jobs(SyntheticSpec(num_jobs=jobs, jobs_per_hour=rate), seed=1)
    cluster = mixed_cluster(nodes)
    gen_s, gen_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    config = RunConfig(f"synthetic-{jobs}", "synthetic", f"mixed-{nodes}", policy, seed=1)
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as out:
        result = simulate(config, cluster, trace, make_policy(policy), Path(out) / "run")
    summary = result.summary
    return {
        "policy": policy,
        "jobs": jobs,
        "nodes": nodes,
        "gen_s": round(gen_s, 1),
        "gen_cpu_s": round(gen_cpu_s, 1),
        "sim_wall_s": round(time.perf_counter() - wall, 1),
        "sim_cpu_s": round(time.process_time() - cpu, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "passes": summary["scheduling_passes"],
        "completed": summary["completed"],
        "gpu_util": round(float(summary["gpu_util"]), 3),
        "avg_queue_delay_s": round(float(summary["avg_queue_delay_s"]), 1),
        "avg_jct_s": float(summary["avg_jct_s"]),
        "load_1min": [round(load_at_start, 1), round(os.getloadavg()[0], 1)],
    }


def in_subprocess(jobs: int, nodes: int, policy: str, timeout_s: float) -> dict[str, object]:
    argv = [sys.executable, __file__, "one", "--jobs", str(jobs), "--nodes", str(nodes)]
    try:
        done = subprocess.run(
            [*argv, "--policy", policy], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"policy": policy, "jobs": jobs, "nodes": nodes, "error": f">{timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"policy": policy, "jobs": jobs, "nodes": nodes, "error": done.stderr[-300:]}
    row: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=("one", "series", "policies"))
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=12_500)
    parser.add_argument("--policy", default="fifo")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--timeout", type=float, default=3600, help="per run (s)")
    args = parser.parse_args()
    if args.what == "one":
        print(json.dumps(measure(args.jobs, args.nodes, args.policy)))
        return
    if args.what == "series":
        runs = [(j, 12_500, "fifo") for j in JOB_SERIES]
        runs += [(NODE_SERIES_JOBS, n, "fifo") for n in NODE_SERIES if n != 12_500]
    else:
        runs = [(args.jobs, args.nodes, p) for p in args.policies.split(",")]
    for jobs, nodes, policy in runs:
        print(json.dumps(in_subprocess(jobs, nodes, policy, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
