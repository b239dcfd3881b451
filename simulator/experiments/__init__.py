"""Experiments run by `gpufleet experiment <name>`.

Each module listed in `EXPERIMENT_MODULES` exposes `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`, and writes through `experiment_output`.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from simulator.run import write_json
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
