"""Replay the 82k-job Philly trace on a 2,048-GPU cluster with FIFO and LAS, end to end.

Each run is the README's command, as a user types it, in a fresh process:

    gpufleet simulate --trace $D/sia/traces/philly.csv --format philly --gpus 2048 \\
        --policy POLICY --out OUT

so interpreter start, imports, trace reading, the simulation and writing every output
file are all counted. Per policy, `--repeat` runs; the median wall time and CPU time
(the process's user + system, which is what its wall time would be on an idle machine)
and the peak memory are printed as a Markdown table row. Targets on a 2-core machine:
FIFO <= 10 s and <= 1 GiB; LAS <= 30 s.

    python benchmarks/philly_replay.py [--repeat 3] [--policies fifo,las]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("GPUFLEET_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
TRACE = DATA / "sia" / "traces" / "philly.csv"


def command(policy: str, out: Path) -> list[str]:
    """The README's command; `gpufleet` is the console script beside this interpreter
    (the same entry point a shell finds), else `python -m gpufleet`."""
    script = Path(sys.executable).parent / "gpufleet"
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "gpufleet"]
    args = ["simulate", "--trace", str(TRACE), "--format", "philly", "--gpus", "2048"]
    return [*entry, *args, "--policy", policy, "--out", str(out)]


def one_run(policy: str, scratch: Path) -> dict[str, float]:
    out = scratch / f"{policy}-{time.monotonic_ns()}"
    start = time.perf_counter()
    child = subprocess.Popen(command(policy, out), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"{' '.join(command(policy, out))} exited with {child.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out)
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mib": usage.ru_maxrss / 1024,
        "completed": summary["completed"],
        "avg_jct_s": summary["avg_jct_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--policies", default="fifo,las")
    args = parser.parse_args()
    if not TRACE.exists():
        sys.exit(f"missing {TRACE}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| policy | median wall s | CPU s | peak MiB | completed | avg JCT h |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for policy in args.policies.split(","):
            runs = [one_run(policy, Path(scratch)) for _ in range(args.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"| {policy} | {med['wall_s']:.2f} | {med['cpu_s']:.2f} "
                f"| {max(r['peak_mib'] for r in runs):.0f} | {int(med['completed'])} "
                f"| {med['avg_jct_s'] / 3600:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
