"""The experiment commands before and after they ran through the sweep runner (issue 17):
`experiment hetero` (a Sia workload, and a Gavel trace measured on a window),
`continual` (two scenarios with batch jobs; drift triggers with inference) and `rap`
(two rates x two host slowdowns) on small invented inputs, once with the code of
`--before` (unpacked with `git archive`) and once with `--after` (default: this checkout,
uncommitted edits included). Compares every file each writes, except `config.json` (it
records the flags, which gained --executor, --address, --workers, --progress), plots
and the output markers; CSV columns that are measured times are left out. Prints one
line per experiment and exits 1 if any file differs.

    python benchmarks/experiments_before_after.py [--before 86f5bae] [--after REV]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from scale_before_after import unpack

REPO = Path(__file__).parents[1]
sys.path.insert(0, str(REPO))

from tests.test_hetero_experiment import invented_data as sia_workloads  # noqa: E402
from tests.test_rap_experiment import invented_data as rap_profiles  # noqa: E402

MEASURED = {
    "rounds.csv": {"policy_wall_s"},
    "policy_timing.csv": {"policy_ms_median", "policy_ms_p95", "wall_s", "cpu_s"},
}
"""Columns that time the run, so they differ between any two runs."""
SKIPPED = {"config.json", ".gpufleet-output.json"}


def commands(inputs: Path) -> dict[str, list[str]]:
    """Each experiment's command line on the invented inputs in `inputs`."""
    sia = ["--workloads", str(inputs / "sia/workloads/tiny"), "--cluster", "sia-homog-64"]
    gavel = ["--gavel-traces", "2", "--gavel-file", str(inputs / "throughputs.json")]
    gavel += ["--gavel-rate", "2", "--gavel-window", "7-10", "--cluster", "gavel-108"]
    mixed = ["--windows", "2", "--scenarios", "light,heavy", "--mix-jobs", "5", "--seed", "2"]
    mixed += ["--policies", "fifo,edf,thief,thief:choose_configs=false"]
    drift = ["--windows", "3", "--scenarios", "light", "--trigger-drop", "0.05"]
    drift += ["--inference-milli", "100", "--policies", "fifo,thief"]
    rap = ["--data", str(inputs / "rap"), "--jobs", "25", "--seeds", "2", "--rates", "2,3"]
    return {
        "hetero": ["hetero", *sia, "--policies", "sia,gavel,las,fifo"],
        "hetero-gavel-window": ["hetero", *gavel, "--policies", "gavel,fifo"],
        "continual": ["continual", *mixed],
        "continual-drift": ["continual", *drift],
        "rap": ["rap", *rap, "--host-slowdowns", "0.05,0.3"],
    }


def make_inputs(root: Path) -> None:
    sia_workloads(root / "sia")
    (root / "rap").mkdir()
    rap_profiles(root / "rap")
    speeds = (("v100", 4.0), ("p100", 2.0), ("k80", 1.0))
    table = {
        worker: {
            "('ResNet-18 (batch size 16)', 1)": {"null": speed},
            "('LM (batch size 5)', 1)": {"null": speed * 2},
            "('LM (batch size 5)', 2)": {"null": speed * 3},
        }
        for worker, speed in speeds
    }
    (root / "throughputs.json").write_text(json.dumps(table))


def run(tree: Path, argv: list[str], out: Path) -> None:
    command = [sys.executable, "-m", "gpufleet.cli", "experiment", *argv, "--out", str(out)]
    subprocess.run(command, cwd=tree, check=True, capture_output=True)


def outputs(out: Path) -> dict[str, Path]:
    return {
        path.relative_to(out).as_posix(): path
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name not in SKIPPED and path.suffix != ".png"
    }


def same(before: Path, after: Path) -> bool:
    if before.read_bytes() == after.read_bytes():
        return True
    if before.suffix == ".parquet":
        return bool(pq.read_table(before).equals(pq.read_table(after)))
    if before.name in MEASURED:
        return _untimed(before) == _untimed(after)
    return False


def _untimed(path: Path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    keep = [i for i, name in enumerate(rows[0]) if name not in MEASURED[path.name]]
    return [[row[i] for i in keep] for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="86f5bae", help="commit before (default: %(default)s)")
    parser.add_argument("--after", help="commit after (default: this checkout)")
    args = parser.parse_args()
    differ = 0
    with tempfile.TemporaryDirectory(prefix="experiments-before-after-") as tmp:
        root = Path(tmp)
        make_inputs(root / "inputs")
        trees = {"before": Path(unpack(args.before, root / "before-tree"))}
        trees["after"] = Path(unpack(args.after, root / "after-tree")) if args.after else REPO
        for name, argv in commands(root / "inputs").items():
            for side, tree in trees.items():
                run(tree, argv, root / side / name)
            files = {side: outputs(root / side / name) for side in trees}
            after = files["after"]
            unequal = [
                f for f, p in files["before"].items() if f not in after or not same(p, after[f])
            ]
            listed = sorted(files["before"]) == sorted(files["after"])
            differ += len(unequal) + (not listed)
            print(
                f"{name}: {len(files['before'])} files, same list: {listed}, "
                f"differing: {unequal or 'none'}",
                flush=True,
            )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
