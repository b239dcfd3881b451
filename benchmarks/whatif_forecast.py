"""`gpufleet whatif` on a typical snapshot: 1,000 nodes of 8 GPUs and 5,000 pods (about
3,500 running, the rest pending), 3 policies, 8 samples, two worker processes.

Two snapshots: runtimes declared (one simulation per policy answers for every sample)
and runtimes unknown (remaining times drawn from a history of 60 finished jobs, so all
8 samples run). Timed end to end as the command runs (`gpufleet whatif --snapshot`, a
child process: interpreter start, imports, the simulations, the outputs); medians of
`--repeat` runs, with the machine's load; CPU seconds are the command's and its workers'
user + system time (on an idle machine with two workers, wall ≈ CPU / 2 + start-up).

With `--baseline REV` the same command of commit REV (unpacked with `git archive`) runs
beside this checkout's (or commit `--after REV`'s, unpacked too), alternating, and the
two runs' `predictions.csv` must be equal byte for byte (a speed-up that changes a
forecast is reported as a difference).

    python benchmarks/whatif_forecast.py [--repeat 3] [--policies fifo,bestfit,fgd]
        [--resolution 60] [--baseline REV [--after REV]]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from traces.snapshot import (  # noqa: E402
    ClusterSnapshot,
    SnapHistory,
    SnapNode,
    SnapPending,
    SnapRunning,
    write_snapshot,
)

GPUS_PER_NODE = 8


def snapshot(nodes: int, pods: int, declared: bool, seed: int = 0) -> ClusterSnapshot:
    """Pods of 1, 2 or 4 GPUs placed node by node while they fit (those are running, up
    to 10 minutes in), the rest pending with ages up to 10 minutes."""
    rng = np.random.default_rng(seed)
    names = [f"node-{i:04d}" for i in range(nodes)]
    snap_nodes = tuple(
        SnapNode(n, 64_000, 512_000, GPUS_PER_NODE, "A100" if i % 2 else "V100")
        for i, n in enumerate(names)
    )
    free = {n: list(range(GPUS_PER_NODE)) for n in names}
    running, pending = [], []
    for k in range(pods):
        gpus = int(rng.choice([1, 1, 2, 4]))
        runtime = float(rng.integers(600, 7200)) if declared else None
        node = names[k % nodes]
        if len(free[node]) >= gpus and k < 0.8 * pods:
            held = tuple(free[node][:gpus])
            del free[node][:gpus]
            elapsed = float(rng.integers(0, 600))
            running.append(
                SnapRunning(f"r{k}", node, 1000, 4096, gpus, 1000, elapsed, held, runtime)
            )
        else:
            age = float(rng.integers(0, 600))
            pending.append(SnapPending(f"p{k}", age, 1000, 4096, gpus, 1000, runtime_s=runtime))
    history = tuple(
        SnapHistory(1, g, 1000, float(d)) for g in (1, 2, 4) for d in rng.integers(600, 7200, 20)
    )
    return ClusterSnapshot(
        1.7e9, snap_nodes, tuple(running), tuple(pending), history=history, policy="fifo"
    )


def timed(path: Path, out: Path, args: argparse.Namespace, code: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system of the command and its workers) of
    the command as the checkout at `code` has it."""
    command = [sys.executable, "-m", "gpufleet.cli", "whatif", "--snapshot", str(path)]
    command += ["--policies", args.policies, "--samples", str(args.samples)]
    command += ["--workers", str(args.workers), "--out", str(out), "--no-progress"]
    command += ["--resolution", str(args.resolution)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=code, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def unpack(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def medians(times: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "median_wall_s": round(float(np.median([t[0] for t in times])), 2),
        "median_cpu_s": round(float(np.median([t[1] for t in times])), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--policies", default="fifo,bestfit,fgd")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--resolution", type=float, default=0.0, help="whatif --resolution")
    parser.add_argument("--baseline", help="a commit to time beside this checkout")
    parser.add_argument(
        "--after", help="with --baseline: time this commit instead of the work tree as it is"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpufleet-whatif-bench-"))
    codes = {"current": unpack(args.after, work / "after") if args.after else REPO}
    if args.baseline:
        codes = {"baseline": unpack(args.baseline, work / "baseline"), **codes}
    results = {}
    for declared in (True, False):
        label = "declared" if declared else "history"
        path = work / f"{label}.json"
        snap = snapshot(args.nodes, args.pods, declared)
        write_snapshot(snap, path)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in codes}
        for _ in range(args.repeat):
            for name, code in codes.items():
                times[name].append(timed(path, work / f"out-{label}-{name}", args, code))
        result: dict[str, object] = {"running": len(snap.running), "pending": len(snap.pending)}
        result |= {name: medians(t) for name, t in times.items()}
        if args.baseline:
            outs = [work / f"out-{label}-{name}" / "predictions.csv" for name in codes]
            forecasts = [out.read_bytes() for out in outs]
            result["predictions_identical"] = forecasts[0] == forecasts[1]
        result["load_at_end"] = round(os.getloadavg()[0], 2)
        results[label] = result
        print(json.dumps({label: result}), flush=True)
    load = os.getloadavg()
    machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    print(json.dumps({**machine, "load": [round(x, 2) for x in load], **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
