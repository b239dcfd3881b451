"""`gpufleet sweep SPEC.yaml --out DIR`: run a spec's grid of cells, resumably, on this
machine or on Ray, and write one results table plus a run directory per cell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulator.progress import add_progress_argument
from simulator.sweep.executors import EXECUTORS, make_executor
from simulator.sweep.runner import run_cells, write_sweep
from simulator.sweep.spec import load_spec
from simulator.sweep.store import CellStore
from traces.outputs import add_force_argument

DESCRIPTION = """\
Run every cell of a sweep spec (traces × policies × option grids × seeds) and write
DIR/results.parquet and DIR/results.csv (one row per cell: parameters, metrics, wall and
CPU seconds, status, error) plus DIR/cells/<key>/ (each cell's run directory).
Cells are keyed by a hash of their inputs (trace content, policy, options, seed, code
version): rerunning skips finished cells and reruns failed or missing ones. A failed
cell is recorded with its error and the sweep goes on; the exit code is 1 if any cell
failed. See docs/sweeps.md for the spec format."""


def add_sweep_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sweep",
        help="run a grid of simulations (local processes or Ray), resumably",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC.yaml", help="the sweep spec")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: a process pool on this machine (default); ray: Ray tasks",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join: auto, or ray://HOST:10001 (default: start a local "
        "Ray instance with --workers CPUs)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="processes (local) or CPUs of a local Ray instance (default: all cores)",
    )
    add_progress_argument(parser)
    add_force_argument(parser)
    parser.set_defaults(handler=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    executor = make_executor(args.executor, args.workers, args.address)
    plan, text = load_spec(args.spec)
    out = Path(args.out)
    store = CellStore(out, args.force)
    store.begin({"spec.yaml": text})
    report = run_cells(plan.cells, plan.inputs, executor, store, args.progress)
    write_sweep(out, report, plan.metrics, {"spec.yaml": text})
    failed = report.failed
    print(
        f"{len(plan.cells)} cells: {report.ran} ran, {report.reused} reused, "
        f"{len(failed)} failed; wrote {out / 'results.parquet'} and {out / 'results.csv'}"
    )
    for record in failed:
        print(f"  failed {record['key'][:16]}: {record['error']}", file=sys.stderr)
    return 1 if failed else 0
