"""`score.csv`, the calibration table `gpufleet whatif --score` writes and the controller
exports as metrics (`controller serve --forecast-score`): per remaining-time source
(and `all`), how many jobs were scored and the mean and p90 absolute error of the
predicted start and finish, in seconds (empty: no job to score)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from traces.csvio import Row, read_rows

SCORE_COLUMNS = (
    "source",
    "jobs",
    "start_mean_abs_err_s",
    "start_p90_abs_err_s",
    "finish_jobs",
    "finish_mean_abs_err_s",
    "finish_p90_abs_err_s",
)


@dataclass(frozen=True, slots=True)
class ScoreRow:
    source: str
    jobs: int
    start_mean_s: float | None
    start_p90_s: float | None
    finish_jobs: int
    finish_mean_s: float | None
    finish_p90_s: float | None


def read_score(path: str | Path) -> list[ScoreRow]:
    """The rows of a `score.csv`; `TraceError` naming file, line and field if one is
    malformed."""
    return [_row(row) for row in read_rows(path, SCORE_COLUMNS)]


def _row(row: Row) -> ScoreRow:
    return ScoreRow(
        source=row.text("source"),
        jobs=row.number("jobs", int),
        start_mean_s=_seconds(row, "start_mean_abs_err_s"),
        start_p90_s=_seconds(row, "start_p90_abs_err_s"),
        finish_jobs=row.number("finish_jobs", int),
        finish_mean_s=_seconds(row, "finish_mean_abs_err_s"),
        finish_p90_s=_seconds(row, "finish_p90_abs_err_s"),
    )


def _seconds(row: Row, field: str) -> float | None:
    if not (row.values.get(field) or "").strip():
        return None
    return row.number(field, float)
