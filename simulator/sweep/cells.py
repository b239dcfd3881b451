"""What one sweep cell is, how it is keyed, and how a worker runs it.

A cell names a task (`module:function`), its parameters (plain JSON values, the
parameter columns of the results table) and the shared inputs it reads (a trace, a
cluster) by name. Inputs are loaded once by the driver and shipped once per worker (a
process pool's initializer, Ray's object store); cells carry only their names.

A cell's key hashes everything its result depends on: the task, the parameters, each
input's content digest and the code version (a digest of the simulator's own source).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Scalar = str | int | float | bool | None
CODE_PACKAGES = ("policies", "simulator", "traces")


@dataclass(frozen=True, eq=False)
class Cell:
    task: str
    """`module:function`, called as `function(params, inputs) -> CellOutput`."""
    params: Mapping[str, Any]
    inputs: Mapping[str, str]
    """Role the task reads it as → name of a shared input."""
    key: str


@dataclass
class CellOutput:
    """What a task returns: summary metrics (the table's columns), files for the cell's
    run directory, and a payload that only the process that started the sweep sees."""

    metrics: dict[str, Scalar]
    files: dict[str, bytes] = field(default_factory=dict)
    payload: Any = None


@dataclass
class Outcome:
    """A cell's result as the worker reports it; `error` is empty when it succeeded."""

    key: str
    metrics: dict[str, Scalar]
    files: dict[str, bytes]
    payload: Any
    error: str
    traceback: str
    wall_s: float
    cpu_s: float

    @property
    def ok(self) -> bool:
        return not self.error


CellTask = Callable[[Mapping[str, Any], Mapping[str, Any]], CellOutput]


def make_cell(
    task: str, params: Mapping[str, Any], inputs: Mapping[str, str], digests: Mapping[str, str]
) -> Cell:
    """A cell keyed by its task, parameters, its inputs' digests and the code version."""
    identity = {
        "task": task,
        "params": params,
        "inputs": {role: digests[name] for role, name in sorted(inputs.items())},
        "code": code_version(),
    }
    key = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
    return Cell(task, dict(params), dict(inputs), key)


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@functools.cache
def code_version() -> str:
    """Digest of the source of every package a run executes (a changed policy or engine
    gives every cell a new key, so nothing computed by older code is reused)."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        root = Path(importlib.import_module(package).__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def resolve_task(task: str) -> CellTask:
    module, _, name = task.partition(":")
    function: CellTask = getattr(importlib.import_module(module), name)
    return function


def execute(cell: Cell, inputs: Mapping[str, Any]) -> Outcome:
    """Run one cell; any exception becomes a failed outcome (the sweep goes on)."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        task = resolve_task(cell.task)
        output = task(cell.params, {role: inputs[name] for role, name in cell.inputs.items()})
    except Exception as err:
        return Outcome(
            cell.key,
            {},
            {},
            None,
            f"{type(err).__name__}: {err}",
            traceback.format_exc(),
            time.perf_counter() - wall,
            time.process_time() - cpu,
        )
    return Outcome(
        cell.key,
        output.metrics,
        output.files,
        output.payload,
        "",
        "",
        time.perf_counter() - wall,
        time.process_time() - cpu,
    )


def failed(cell: Cell, error: str) -> Outcome:
    """The outcome of a cell whose worker could not report one (it died)."""
    return Outcome(cell.key, {}, {}, None, error, "", 0.0, 0.0)
