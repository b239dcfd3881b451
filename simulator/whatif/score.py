"""How good were earlier forecasts? `gpufleet whatif --score RECORDED_DIR --forecast DIR`
compares a forecast's p50 start and finish of each job under the live policy with what a
later `controller record` saw: mean and p90 absolute error per remaining-time source.

Jobs are matched by id without namespace (the recorder drops it); times are put on one
clock through the snapshot's `taken_at_unix` and the recording's `origin_unix_s`. A job
the recording never saw start, or saw start but not finish, adds no error to that column.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from traces.csvio import read_rows
from traces.errors import TraceError
from traces.forecast_score import SCORE_COLUMNS
from traces.outputs import output_directory
from traces.snapshot import read_snapshot

JOB_COLUMNS = (
    "job_id",
    "source",
    "predicted_start_s",
    "actual_start_s",
    "predicted_finish_s",
    "actual_finish_s",
)
"""Per job, seconds after the snapshot (empty: not predicted, or not seen)."""


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--score",
        type=Path,
        metavar="RECORDED_DIR",
        help="score the forecast in --forecast against this `controller record` directory",
    )
    parser.add_argument(
        "--forecast", type=Path, help="with --score: an earlier `gpufleet whatif` output"
    )


@dataclass(frozen=True)
class Outcome:
    start: float
    finish: float | None


@dataclass(frozen=True)
class Scored:
    job_id: str
    source: str
    predicted_start: float | None
    actual_start: float
    predicted_finish: float | None
    actual_finish: float | None


def score_command(args: argparse.Namespace) -> int:
    if args.forecast is None:
        raise ValueError("--score needs --forecast DIR (an earlier whatif output)")
    scored = score(args.forecast, args.score)
    table = score_table(scored)
    with output_directory(args.out, "whatif --score", args.force) as stage:
        _write(stage / "score.csv", SCORE_COLUMNS, table)
        _write(stage / "score_jobs.csv", JOB_COLUMNS, [_job_row(s) for s in scored])
    print(format_score(table))
    print(f"wrote {args.out}")
    return 0


def score(forecast_dir: Path, recorded_dir: Path) -> list[Scored]:
    """Each forecast job under the live policy that the recording saw start."""
    snapshot = read_snapshot(forecast_dir / "snapshot.json")
    config = json.loads((forecast_dir / "config.json").read_text(encoding="utf-8"))
    live = snapshot.policy or config["policies"][0]
    origin = _origin(recorded_dir)
    shift = origin - snapshot.taken_at_unix
    outcomes = recorded_outcomes(recorded_dir / "placements.csv")
    out = []
    for row in read_rows(forecast_dir / "predictions.csv", ("policy", "job_id", "source")):
        if row.text("policy") != live:
            continue
        outcome = outcomes.get(row.text("job_id").split("/", 1)[-1])
        if outcome is None:
            continue
        out.append(
            Scored(
                row.text("job_id"),
                row.text("source"),
                _optional(row.values.get("start_p50_s")),
                outcome.start + shift,
                _optional(row.values.get("finish_p50_s")),
                None if outcome.finish is None else outcome.finish + shift,
            )
        )
    return out


def _origin(recorded_dir: Path) -> float:
    path = recorded_dir / "recording.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TraceError(path, f"cannot read the recording ({err})") from None
    value = data.get("origin_unix_s") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TraceError(path, f"expected a Unix time, got {value!r}", field="origin_unix_s")
    return float(value)


def recorded_outcomes(path: Path) -> dict[str, Outcome]:
    """Per job: its first pod's start and its last pod's end (None while one runs)."""
    starts: dict[str, float] = {}
    ends: dict[str, list[float | None]] = {}
    for row in read_rows(path, ("job_id", "start_s")):
        job = row.text("job_id")
        starts[job] = min(starts.get(job, math.inf), row.number("start_s", float))
        end = row.values.get("end_s", "").strip()
        ends.setdefault(job, []).append(row.number("end_s", float) if end else None)
    return {job: Outcome(start, _last(ends[job])) for job, start in starts.items()}


def _optional(text: str | None) -> float | None:
    return float(text) if text and text.strip() else None


def score_table(scored: Sequence[Scored]) -> list[dict[str, Any]]:
    """Mean and p90 absolute error of start and finish, per source, then over all."""
    sources = sorted({s.source for s in scored})
    groups = [(source, [s for s in scored if s.source == source]) for source in sources]
    return [_errors(name, group) for name, group in [*groups, ("all", list(scored))]]


def _errors(source: str, group: Sequence[Scored]) -> dict[str, Any]:
    starts = [
        abs(s.predicted_start - s.actual_start) for s in group if s.predicted_start is not None
    ]
    finishes = [
        abs(s.predicted_finish - s.actual_finish)
        for s in group
        if s.predicted_finish is not None and s.actual_finish is not None
    ]
    return {
        "source": source,
        "jobs": len(starts),
        "start_mean_abs_err_s": _mean(starts),
        "start_p90_abs_err_s": _p90(starts),
        "finish_jobs": len(finishes),
        "finish_mean_abs_err_s": _mean(finishes),
        "finish_p90_abs_err_s": _p90(finishes),
    }


def _mean(values: Sequence[float]) -> object:
    return round(float(np.mean(values)), 3) if values else ""


def _p90(values: Sequence[float]) -> object:
    return round(float(np.percentile(values, 90)), 3) if values else ""


def _job_row(s: Scored) -> dict[str, Any]:
    return {
        "job_id": s.job_id,
        "source": s.source,
        "predicted_start_s": "" if s.predicted_start is None else s.predicted_start,
        "actual_start_s": round(s.actual_start, 3),
        "predicted_finish_s": "" if s.predicted_finish is None else s.predicted_finish,
        "actual_finish_s": "" if s.actual_finish is None else round(s.actual_finish, 3),
    }


def _write(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def format_score(table: Sequence[dict[str, Any]]) -> str:
    widths = [max(len(k), *(len(str(r[k])) for r in table)) for k in SCORE_COLUMNS]
    lines = ["  ".join(k.rjust(w) for k, w in zip(SCORE_COLUMNS, widths, strict=True))]
    for row in table:
        cells = (str(row[k]).rjust(w) for k, w in zip(SCORE_COLUMNS, widths, strict=True))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _last(ends: Sequence[float | None]) -> float | None:
    """The job's end: its last pod's, or None while one of them still runs."""
    known = [e for e in ends if e is not None]
    return None if len(known) < len(ends) else max(known)
