"""Experiments run by `gpufleet experiment <name>`.

Each module listed in `EXPERIMENT_MODULES` exposes `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`, and writes through `experiment_output`.
An experiment's runs are cells of the sweep runner (`simulator.sweep`), run on the
executor its `--executor`/`--workers` flags choose (`run_experiment_cells`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from simulator.progress import add_progress_argument
from simulator.run import write_json
from simulator.sweep.cells import Cell
from simulator.sweep.executors import EXECUTORS, Executor, make_executor
from simulator.sweep.runner import CellHook, SweepReport, run_cells
from traces.outputs import output_directory

EXPERIMENT_MODULES: tuple[str, ...] = ("fgd_inflation", "continual", "rap", "hetero")


def experiment_modules() -> list[ModuleType]:
    return [importlib.import_module(f"simulator.experiments.{m}") for m in EXPERIMENT_MODULES]


@contextmanager
def experiment_output(name: str, args: argparse.Namespace) -> Iterator[Path]:
    """Stage experiment `name`'s files for `args.out` (by the rules of `traces.outputs`,
    `args.force` included); on success add `config.json`, how it was run, which
    `simulator.results` attaches to the loaded experiment."""
    with output_directory(args.out, f"experiment {name}", args.force) as stage:
        yield stage
        # Callables (the CLI's handler) say nothing about the run and print differently
        # each time.
        arguments = {key: value for key, value in vars(args).items() if not callable(value)}
        write_json(stage / "config.json", {"experiment": name, **arguments})


def add_executor_arguments(
    parser: argparse.ArgumentParser, workers: int | None, progress: bool = True
) -> None:
    """`--executor`, `--address`, `--workers` (default `workers`; None: all cores) and,
    with `progress`, `--progress`, as `gpufleet sweep` takes them."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where the runs go: local processes (default) or Ray tasks",
    )
    parser.add_argument(
        "--address", metavar="ADDR", help="Ray cluster to join (auto, ray://HOST:10001)"
    )
    default = "all cores" if workers is None else str(workers)
    parser.add_argument(
        "--workers",
        type=int,
        default=workers,
        help=f"runs at once: processes, or CPUs of a local Ray instance (default: {default})",
    )
    if progress:
        add_progress_argument(parser)


def executor_for(args: argparse.Namespace) -> Executor:
    """The executor `args` choose; a bad choice fails here, before any output or run."""
    return make_executor(args.executor, args.workers, args.address)


def run_experiment_cells(
    name: str,
    cells: Sequence[Cell],
    inputs: Mapping[str, Any],
    executor: Executor,
    args: argparse.Namespace,
    on_done: CellHook | None = None,
) -> SweepReport:
    """Run an experiment's cells (every one, even after a failure) with its progress bar."""
    return run_cells(cells, inputs, executor, progress=args.progress, label=name, on_done=on_done)


def payloads(report: SweepReport, cells: Sequence[Cell]) -> list[Any]:
    """Each cell's payload in cell order; raises naming the failed runs, once all ended."""
    if report.failed:
        first = report.failed[0]
        raise ValueError(
            f"{len(report.failed)} of {len(cells)} runs failed; first: "
            f"{_describe(first['params'])}: {first['error']}"
        )
    return [report.payloads[cell.key] for cell in cells]


def _describe(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if k in ("trace", "policy", "seed"))
