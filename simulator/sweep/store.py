"""A sweep's output directory: one run directory per cell, and the results table.

    DIR/cells/<key16>/result.json   the cell's parameters, status, metrics, timings
    DIR/cells/<key16>/...           the files its task wrote (e.g. jobs.parquet)
    DIR/cells/<key16>/error.txt     a failed cell's traceback
    DIR/results.parquet, results.csv, spec.yaml

A cell directory is written whole or not at all (`traces.outputs.output_directory`), so
a finished cell survives Ctrl-C and a killed sweep; rerunning reuses every cell whose
`result.json` says it finished and reruns the failed and missing ones.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from simulator.sweep.cells import Cell, Outcome, Scalar, canonical_json
from traces.outputs import check_output_dir, output_directory

RESULT_FILE = "result.json"
TIMING_COLUMNS = ("wall_s", "cpu_s")
"""Measured, so they differ between two runs of the same cell; nothing else may."""


class CellStore:
    """The cell directories under `root/cells`."""

    def __init__(self, root: Path, force: bool = False) -> None:
        check_output_dir(root, force)
        self.root = root
        self.force = force
        self.cells = root / "cells"

    def begin(self, files: Mapping[str, str]) -> None:
        """Make `root` a gpufleet output directory holding `files` (e.g. the spec) before
        the first cell is written into it."""
        _write_files(self.root, files, self.force)

    def directory(self, key: str) -> Path:
        return self.cells / key[:16]

    def finished(self, cell: Cell) -> dict[str, Any] | None:
        """The record of `cell` if an earlier run finished it (same key), else None."""
        try:
            record: dict[str, Any] = json.loads(
                (self.directory(cell.key) / RESULT_FILE).read_text(encoding="utf-8")
            )
        except (OSError, ValueError):
            return None
        if record.get("key") != cell.key or record.get("status") != "ok":
            return None
        return record

    def save(self, cell: Cell, outcome: Outcome) -> dict[str, Any]:
        """Write the cell's directory (replacing a failed attempt's) and return its record."""
        record = cell_record(cell, outcome)
        with output_directory(self.directory(cell.key), "sweep cell") as stage:
            for name, data in outcome.files.items():
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                (stage / name).write_bytes(data)
            if outcome.traceback:
                (stage / "error.txt").write_text(outcome.traceback, encoding="utf-8")
            (stage / RESULT_FILE).write_text(
                json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8"
            )
        return record


def cell_record(cell: Cell, outcome: Outcome) -> dict[str, Any]:
    """What the table shows of a cell; JSON round-trips it exactly (floats included),
    so a reused cell reads back the row it had."""
    return {
        "key": cell.key,
        "params": cell.params,
        "status": "ok" if outcome.ok else "failed",
        "error": outcome.error,
        "metrics": outcome.metrics,
        "wall_s": outcome.wall_s,
        "cpu_s": outcome.cpu_s,
    }


def table_rows(records: Sequence[Mapping[str, Any]], run_dirs: bool) -> list[dict[str, Scalar]]:
    """One flat row per cell: key, status, parameters (options as `options.<name>`),
    metrics, wall and CPU seconds, error, run directory; a column is empty where a cell
    has no such parameter or metric."""
    params = [_flat(record["params"]) for record in records]
    metrics = [record["metrics"] for record in records]
    param_names = list(dict.fromkeys(name for p in params for name in p))
    metric_names = list(dict.fromkeys(name for m in metrics for name in m))
    rows = []
    for record, flat, measured in zip(records, params, metrics, strict=True):
        row: dict[str, Scalar] = {"cell": record["key"][:16], "status": record["status"]}
        row.update({name: flat.get(name) for name in param_names})
        row.update({name: measured.get(name) for name in metric_names})
        row.update({name: record[name] for name in TIMING_COLUMNS})
        row["error"] = record["error"]
        if run_dirs:
            row["run_dir"] = f"cells/{record['key'][:16]}"
        rows.append(row)
    return rows


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    flat: dict[str, Scalar] = {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{name}."))
        elif isinstance(value, list | tuple):
            flat[prefix + name] = canonical_json(value)
        else:
            flat[prefix + name] = value
    return flat


def results_table(rows: Sequence[Mapping[str, Scalar]]) -> pa.Table:
    """Columns in order of first appearance; a column mixing types is stored as text."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values])
    return pa.table(columns)


def write_results(
    out: Path, rows: Sequence[Mapping[str, Scalar]], extra: Mapping[str, str]
) -> None:
    """`results.parquet` and `results.csv` (plus `extra` text files) into `out`, by the
    rules of `traces.outputs` (the cell directories are not touched)."""
    table = results_table(rows)
    _write_files(out, {**extra, "results.csv": table_csv(table)}, False, table)


def _write_files(
    out: Path, files: Mapping[str, str], force: bool, table: pa.Table | None = None
) -> None:
    with output_directory(out, "sweep", force) as stage:
        for name, text in files.items():
            (stage / name).write_text(text, encoding="utf-8")
        if table is not None:
            pq.write_table(table, stage / "results.parquet")


def table_csv(table: pa.Table) -> str:
    """CSV with floats as Python writes them (shortest repr, exact round trip)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows(
        zip(*(_cells(table[name].to_pylist()) for name in table.column_names), strict=True)
    )
    return buffer.getvalue()


def _cells(values: list[Any]) -> list[str]:
    return ["" if v is None else str(v) for v in values]
