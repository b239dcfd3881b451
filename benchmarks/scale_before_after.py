"""The engine and cluster state before and after issue 17's changes, in the same run:
`--jobs` synthetic jobs (offered load `--load`) on `--nodes` 8-GPU nodes (A100 and V100 in
turn), replayed through `Simulation` by each policy, once with the code of `--before`
(unpacked with `git archive`) and once with `--after` (a commit, unpacked the same way;
default this checkout, uncommitted edits included), alternating, each in a fresh
process. Prints one JSON line per run: CPU and wall seconds, passes, average JCT and a
digest of every job's record (start, end, placement, restarts: equal before and after
when the change preserves the policies' decisions).

    python benchmarks/scale_before_after.py [--before ca0a1d1] [--after REV] [--jobs 20000]
        [--nodes 12500] [--policies fifo,bestfit,las] [--rounds 2] [--load 0.7]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).parents[1]


def replay(jobs_n: int, nodes_n: int, policy: str, load: float) -> dict[str, object]:
    """One replay with whichever `policies`/`simulator` come first on sys.path."""
    from policies import NodeSpec, make_policy
    from simulator.engine import EngineOptions, Simulation
    from traces.synthetic import SyntheticSpec, generate_jobs

    nodes = [
        NodeSpec(f"node-{i:05d}", 96_000, 786_432, 8, ("A100", "V100")[i % 2], rack=f"r{i // 16}")
        for i in range(nodes_n)
    ]
    rate = load * nodes_n * 8 * 3600 / 165_000
    jobs = generate_jobs(SyntheticSpec(num_jobs=jobs_n, jobs_per_hour=rate), seed=1)
    sim = Simulation(nodes, jobs, make_policy(policy), EngineOptions(seed=1))
    wall, cpu = time.perf_counter(), time.process_time()
    recorder = sim.run()
    summary = recorder.summary()
    rows = repr(sorted(recorder.jobs, key=repr)).encode()  # floats' reprs are exact
    return {
        "policy": policy,
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "passes": sim.pass_count,
        "avg_jct_s": summary["avg_jct_s"],
        "restarts": summary["restarts"],
        "jobs_sha256": hashlib.sha256(rows).hexdigest()[:16],
    }


def unpack(rev: str, into: Path) -> str:
    """`git archive` of `rev` unpacked into `into` (made here); returns its path."""
    archive = subprocess.run(
        ["git", "archive", rev], cwd=REPO, capture_output=True, check=True
    ).stdout
    into.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return str(into)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default="ca0a1d1")
    parser.add_argument("--after", help="a commit (default: this checkout as it is)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=12_500)
    parser.add_argument("--policies", default="fifo,bestfit,las")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load", type=float, default=0.7, help="offered load (queues above 1)")
    parser.add_argument("--one", metavar="POLICY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(replay(args.jobs, args.nodes, args.one, args.load)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        before = unpack(args.before, Path(tmp) / "before")
        after = str(REPO) if args.after is None else unpack(args.after, Path(tmp) / "after")
        for round_no in range(1, args.rounds + 1):
            for policy in args.policies.split(","):
                sizes = ["--jobs", str(args.jobs), "--nodes", str(args.nodes)]
                sizes += ["--load", str(args.load)]
                for label, path in (("before", before), ("after", after)):
                    done = subprocess.run(
                        [sys.executable, __file__, "--one", policy, *sizes],
                        env={**os.environ, "PYTHONPATH": path},
                        cwd=tmp,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    print(json.dumps({"code": label, "round": round_no, **row}), flush=True)


if __name__ == "__main__":
    main()
