"""Benchmark: Sia's two exact ILP solvers on every round of a real run.

Runs Sia on a workload (`sia-64` at scale k, up to `--hours` of simulated time),
recording the ILP of each round as the policy builds it, then solves every recorded ILP
with the dynamic program and with HiGHS. Reports each solver's total and per-round time
and the rounds `auto` gives the DP, and checks that both reach the same objective in
every round (where several optima tie they may pick different ones).

    python benchmarks/sia_ilp_solvers.py --workload newtrace/workload-1.csv
    python benchmarks/sia_ilp_solvers.py --workload saturn/workload-1.csv --scale 2 --hours 4
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from sia_solve_time import scaled_jobs

import policies.sia as sia
from policies import make_policy
from policies.sia_ilp import Allocation, solve_allocation
from simulator.clusters import named_cluster
from simulator.engine import EngineOptions, Simulation

Call = tuple[tuple[Any, ...], dict[str, Any]]


def record_rounds(path: str, scale: int, hours: float) -> list[Call]:
    """The arguments of every round's ILP in a Sia run."""
    calls: list[Call] = []

    def recording(*args: Any, **kwargs: Any) -> Allocation:
        calls.append((args, kwargs))
        return solve_allocation(*args, **kwargs)

    jobs = scaled_jobs(path, scale)
    options = EngineOptions(startup_delay=True, horizon_s=hours * 3600)
    sia.solve_allocation = recording  # the policy's module-level call, intercepted
    try:
        Simulation(named_cluster("sia-64", scale), jobs, make_policy("sia"), options).run()
    finally:
        sia.solve_allocation = solve_allocation
    return calls


def solve_all(calls: list[Call], solver: str) -> tuple[np.ndarray, list[Allocation]]:
    """Seconds per round and the answers, with `solver` forced."""
    seconds, answers = [], []
    for args, kwargs in calls:
        started = time.perf_counter()
        answers.append(solve_allocation(*args, **{**kwargs, "solver": solver}))
        seconds.append(time.perf_counter() - started)
    return np.array(seconds), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        choices=range(1, 5),
        help="1-4: the forced DP holds a float per usage state, (16k+1)(24k+1)² at scale k",
    )
    parser.add_argument("--hours", type=float, default=1000.0)
    args = parser.parse_args()
    calls = record_rounds(args.workload, args.scale, args.hours)
    results = {solver: solve_all(calls, solver) for solver in ("dp", "highs", "auto")}
    dp, highs = results["dp"][1], results["highs"][1]
    differ = sum(abs(d.objective - h.objective) > 1e-6 for d, h in zip(dp, highs, strict=True))
    same = sum(
        (d.adaptive, d.rigid) == (h.adaptive, h.rigid) for d, h in zip(dp, highs, strict=True)
    )
    print(f"rounds={len(calls)} objective_mismatches={differ} identical_allocations={same}")
    for solver, (seconds, _) in results.items():
        ms = seconds * 1000
        print(
            f"{solver}: total_s={seconds.sum():.2f} median_ms={np.median(ms):.2f} "
            f"p95_ms={np.percentile(ms, 95):.2f} max_ms={ms.max():.2f}"
        )


if __name__ == "__main__":
    main()
