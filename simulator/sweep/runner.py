"""Run a sweep's cells: reuse the finished ones, run the rest on an executor, record
every outcome as it arrives (a failure too), and build the results table in cell order.

A cell that fails is recorded with its error and the sweep goes on. On Ctrl-C the
executor is stopped; every cell recorded so far stays on disk for the next run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from simulator.progress import ProgressBar
from simulator.sweep.cells import Cell
from simulator.sweep.executors import Executor
from simulator.sweep.store import CellStore, Scalar, cell_record, table_rows, write_results

CellHook = Callable[[int, int, dict[str, Any], float], None]


@dataclass
class SweepReport:
    records: list[dict[str, Any]]
    """One per cell, in the order the cells were given."""
    payloads: dict[str, Any] = field(default_factory=dict)
    """Payload of each cell run now, by key (cells reused from disk have none)."""
    ran: int = 0
    reused: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]


def run_cells(
    cells: Sequence[Cell],
    inputs: Mapping[str, Any],
    executor: Executor,
    store: CellStore | None = None,
    progress: bool | None = None,
    label: str = "sweep",
    log: TextIO | None = None,
    on_done: CellHook | None = None,
) -> SweepReport:
    """Run `cells` not yet finished in `store` (all of them without a store);
    `on_done(done, total, record, elapsed_s)` follows each cell run now."""
    log = log or sys.stderr
    records: dict[str, dict[str, Any]] = {}
    todo: list[Cell] = []
    for cell in cells:
        record = store.finished(cell) if store is not None else None
        if record is not None:
            records[cell.key] = record
        else:
            todo.append(cell)
    report = SweepReport([], reused=len(records))
    bar = ProgressBar(len(todo), label, enabled=progress)
    failures = 0
    started = time.perf_counter()
    try:
        for cell, outcome in executor.run(todo, inputs):
            record = store.save(cell, outcome) if store else cell_record(cell, outcome)
            records[cell.key] = record
            report.payloads[cell.key] = outcome.payload
            report.ran += 1
            if not outcome.ok:
                failures += 1
                print(f"\n{label}: cell {cell.key[:16]} failed: {outcome.error}", file=log)
            bar.update(report.ran, f"({failures} failed)" if failures else "")
            if on_done is not None:
                on_done(report.ran, len(todo), record, time.perf_counter() - started)
    finally:
        bar.close(f"({failures} failed)" if failures else "")
    report.records = [records[cell.key] for cell in cells]
    return report


def write_sweep(
    out: Path,
    report: SweepReport,
    metrics: Sequence[str] | None,
    extra: Mapping[str, str],
) -> list[dict[str, Scalar]]:
    """The results table (`results.parquet`, `results.csv`) of `report` into `out`."""
    records = report.records
    if metrics is not None:
        records = [{**r, "metrics": {m: r["metrics"].get(m) for m in metrics}} for r in records]
    rows = table_rows(records, run_dirs=True)
    write_results(out, rows, extra)
    return rows
