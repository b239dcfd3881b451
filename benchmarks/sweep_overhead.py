"""The FGD inflation study three ways, in one run, on the same machine: today's
`gpufleet experiment fgd-inflation --workers 2` as it was before the sweep runner
(commit BASELINE, unpacked with `git archive`), the same cells through
`gpufleet sweep --executor local --workers 2`, and through `--executor ray` on a local
Ray instance with 2 CPUs, both from commit AFTER (default HEAD, unpacked the same way, so
that edits in the work tree during the run change nothing). Each is a fresh process timed
end to end, and the variants are interleaved round by round so that they share the
machine's load.

    python benchmarks/sweep_overhead.py --out /tmp/sweep-bench [--traces default,cpu050,...]
        [--seeds 42-43] [--rounds 1] [--baseline COMMIT] [--after COMMIT]
        [--variants baseline,local,ray]

Ray's overhead per cell is (Ray wall - local wall) / cells, Ray's start-up included;
the tables of the two sweeps must be equal but for wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

DATA = Path(os.environ.get("GPUFLEET_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
OPENB = DATA / "alibaba-gpu-2023"
REPO = Path(__file__).parents[1]
BASELINE = "ab05310"
"""The last commit whose fgd-inflation had its own process pool."""
POLICIES = ("fgd", "bestfit", "packing", "clustering", "dotprod", "random")
TIMING = ("wall_s", "cpu_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--traces", default="default,cpu050,gpushare40")
    parser.add_argument("--seeds", default="42-43")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument(
        "--variants", default="baseline,local,ray", help="which of baseline,local,ray to run"
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - {"baseline", "local", "ray"}
    if unknown:
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    baseline = unpack(args.baseline, args.out / "baseline-src") if "baseline" in variants else None
    after = {"PYTHONPATH": str(unpack(args.after, args.out / "after-src"))}
    traces = args.traces.split(",")
    spec = write_spec(args.out / "spec.yaml", traces, args.seeds)
    cells = len(traces) * len(POLICIES) * len(expand(args.seeds))
    nodes = str(OPENB / "openb_node_list_gpu_node.csv")
    experiment = ["experiment", "fgd-inflation", "--nodes", nodes, "--no-plots"]
    for name in traces:
        experiment += ["--pods", str(OPENB / f"openb_pod_list_{name}.csv")]
    experiment += ["--policies", ",".join(POLICIES), "--seeds", args.seeds, "--workers", "2"]
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for round_no in range(args.rounds):
        out = args.out / f"round{round_no}"
        sweep = ["sweep", str(spec), "--workers", "2", "--no-progress"]
        commands = {
            "local": ([*sweep, "--out", str(out / "local")], after),
            "ray": ([*sweep, "--out", str(out / "ray"), "--executor", "ray"], after),
        }
        if baseline is not None:
            old_command = [*experiment, "--out", str(out / "baseline")]
            commands["baseline"] = (old_command, {"PYTHONPATH": str(baseline)})
        for name in variants:
            walls[name].append(timed(*commands[name], args.out))
        same = (
            "local" in variants and "ray" in variants and table(out / "local") == table(out / "ray")
        )
        print(f"round {round_no}: {walls}, tables equal: {same}", flush=True)
    median = {name: statistics.median(values) for name, values in walls.items()}
    print(f"cells: {cells}")
    for name, value in median.items():
        print(f"{name}: median wall {value:.1f} s ({value / cells * 1000:.0f} ms a cell)")
    if "baseline" in median and "local" in median:
        print(f"local vs baseline: {median['local'] / median['baseline']:.3f}x")
    if "local" in median and "ray" in median:
        print(f"Ray overhead per cell: {(median['ray'] - median['local']) / cells * 1000:.0f} ms")


def unpack(commit: str, target: Path) -> Path:
    if not target.exists():
        archive = subprocess.run(
            ["git", "archive", commit], cwd=REPO, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return target


def write_spec(path: Path, traces: list[str], seeds: str) -> Path:
    lines = ["experiment: fgd-inflation", "traces:"]
    for name in traces:
        pods = OPENB / f"openb_pod_list_{name}.csv"
        lines.append(f"  - {{path: {pods}, format: openb, name: {name}}}")
    lines.append(f"cluster: {{file: {OPENB / 'openb_node_list_gpu_node.csv'}}}")
    lines.append(f"policies: [{', '.join(POLICIES)}]")
    lines.append(f"seeds: {seeds}")
    path.write_text("\n".join(lines) + "\n")
    return path


def expand(seeds: str) -> list[int]:
    first, _, last = seeds.partition("-")
    return list(range(int(first), int(last or first) + 1))


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one gpufleet command, run from `cwd` (not the repository, whose
    folder `python -m` would put before PYTHONPATH)."""
    command = [sys.executable, "-m", "gpufleet.cli", *argv]
    start = time.perf_counter()
    subprocess.run(
        command, check=True, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def table(out: Path) -> list[list[str]]:
    rows = list(csv.reader((out / "results.csv").open()))
    keep = [i for i, name in enumerate(rows[0]) if name not in TIMING]
    return [[row[i] for i in keep] for row in rows]


if __name__ == "__main__":
    main()
