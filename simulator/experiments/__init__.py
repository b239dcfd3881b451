"""Experiments run by `gpufleet experiment <name>`.

Each module listed in `EXPERIMENT_MODULES` exposes `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENT_MODULES: tuple[str, ...] = ("fgd_inflation", "continual", "rap", "hetero")


def experiment_modules() -> list[ModuleType]:
    return [importlib.import_module(f"simulator.experiments.{m}") for m in EXPERIMENT_MODULES]
