"""Result files as pandas DataFrames, for notebooks and ad-hoc analysis.

Two shapes of directory are understood, and only through the files in them:

- a **run directory** (`gpufleet simulate`, or one policy of `gpufleet compare`):
  `jobs.parquet`, `timeline.parquet`, `config.json`, `summary.json`, and any further
  `*.parquet` / `*.csv` a host adds (e.g. `streams.parquet`);
- an **experiment directory** (`gpufleet compare`, `gpufleet experiment NAME`): tables
  at its top level (`summary.csv`, `curves.csv`, …), JSON documents (`config.json`,
  `calibration.json`, …), and any number of run directories beneath it. Some
  experiments write one run directory per run (compare, continual), others write every
  run's rows into one top-level table with the run's labels as leading columns (hetero's
  `jobs.csv`); `ExperimentResults.jobs()` and `timeline()` read either.

Nothing here imports the simulator: the files are the interface.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RUN_FILES = ("jobs.parquet", "timeline.parquet", "config.json", "summary.json")
TABLE_SUFFIXES = (".parquet", ".csv")


class ResultsError(ValueError):
    """A directory that is not the result layout it was asked to be."""


@dataclass(frozen=True)
class RunResults:
    """One simulation run: per-job rows, the cluster timeline, its configuration."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    jobs: pd.DataFrame
    timeline: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Further tables in the directory, keyed by file stem (e.g. `streams`)."""

    @property
    def policy(self) -> str:
        return str(self.config.get("policy", self.path.name))

    @property
    def gpu_models(self) -> list[str]:
        """GPU models of the cluster, from the timeline's `gpus_<model>` columns."""
        prefix = "gpus_"
        return [c.removeprefix(prefix) for c in self.timeline.columns if c.startswith(prefix)]

    def completed_jobs(self) -> pd.DataFrame:
        return self.jobs[self.jobs["status"] == "completed"]

    def table(self, name: str) -> pd.DataFrame:
        """`jobs`, `timeline` or a further table by file stem."""
        if name == "jobs":
            return self.jobs
        if name == "timeline":
            return self.timeline
        try:
            return self.tables[name]
        except KeyError:
            raise ResultsError(f"run {self.path} has no {name} table") from None


@dataclass(frozen=True)
class ExperimentResults:
    """Tables at the top of an experiment directory plus every run directory beneath."""

    path: Path
    config: dict[str, Any]
    """`config.json` at the top, if the experiment wrote one (else empty)."""
    tables: dict[str, pd.DataFrame]
    runs: dict[str, RunResults]
    """Keyed by the run directory's path relative to the experiment (`fifo`, `light/edf`)."""
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Other top-level JSON objects by file stem (e.g. RAP's `calibration`)."""

    def table(self, name: str) -> pd.DataFrame:
        """A top-level table by file stem (`summary`, `curves`, `failures`, …)."""
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(sorted(self.tables)) or "none"
            raise KeyError(f"{self.path} has no table {name!r} (tables: {known})") from None

    @property
    def summary(self) -> pd.DataFrame:
        """`summary.csv` when the experiment wrote one, else one row per run's summary."""
        if "summary" in self.tables:
            return self.tables["summary"]
        rows = [{"run": key, **run.summary} for key, run in self.runs.items()]
        return pd.DataFrame(rows)

    def jobs(self, config_keys: Sequence[str] = ("policy",)) -> pd.DataFrame:
        """Every run's jobs in one frame (see `stacked`)."""
        return self.stacked("jobs", config_keys)

    def timeline(self, config_keys: Sequence[str] = ("policy",)) -> pd.DataFrame:
        """Every run's timeline in one frame (see `stacked`)."""
        return self.stacked("timeline", config_keys)

    def stacked(self, name: str, config_keys: Sequence[str] = ("policy",)) -> pd.DataFrame:
        """Per-run table `name` (`jobs`, `timeline`, `streams`, …) of every run directory
        in one frame, tagged with `run` and the named keys of each run's config. An
        experiment without run directories that wrote `name` as one top-level table
        (already labelled per run) returns that table."""
        if not self.runs:
            if name in self.tables:
                return self.tables[name]
            raise ResultsError(f"{self.path} holds no run directories and no {name} table")
        frames = []
        for key, run in self.runs.items():
            table = run.table(name)
            tags = {"run": key, **{k: run.config.get(k) for k in config_keys}}
            frames.append(table.assign(**tags))
        return pd.concat(frames, ignore_index=True)


def load_run(path: str | Path) -> RunResults:
    """Read a run directory; raises `ResultsError` naming any missing file."""
    directory = Path(path)
    missing = [name for name in RUN_FILES if not (directory / name).is_file()]
    if missing:
        raise ResultsError(f"{directory} is not a run directory: no {', '.join(missing)}")
    core = {Path(name).stem for name in RUN_FILES}
    extra = {k: v for k, v in _read_tables(directory).items() if k not in core}
    return RunResults(
        path=directory,
        config=_read_json(directory / "config.json"),
        summary=_read_json(directory / "summary.json"),
        jobs=pd.read_parquet(directory / "jobs.parquet"),
        timeline=pd.read_parquet(directory / "timeline.parquet"),
        tables=extra,
    )


def load_experiment(path: str | Path) -> ExperimentResults:
    """Read an experiment directory: its top-level tables and every run beneath it."""
    directory = Path(path)
    if not directory.is_dir():
        raise ResultsError(f"{directory} is not a directory")
    tables = _read_tables(directory)
    runs = {key: load_run(directory / key) for key in _run_keys(directory)}
    if not tables and not runs:
        raise ResultsError(f"{directory} holds no result tables and no run directories")
    documents = {path.stem: _read_json(path) for path in _visible(directory, ".json")}
    config = documents.pop("config", {})
    return ExperimentResults(directory, config, tables, runs, documents)


def ecdf(values: pd.Series | Sequence[float]) -> pd.DataFrame:
    """Empirical CDF: sorted `value` and the `fraction` of samples at or below it."""
    ordered = np.sort(np.asarray(values, dtype=float))
    ordered = ordered[~np.isnan(ordered)]
    fraction = np.arange(1, ordered.size + 1) / max(ordered.size, 1)
    return pd.DataFrame({"value": ordered, "fraction": fraction})


def _run_keys(directory: Path) -> list[str]:
    """Run directories beneath `directory`, skipping hidden ones (staging leftovers)."""
    keys = []
    for found in directory.rglob("jobs.parquet"):
        relative = found.parent.relative_to(directory)
        if relative.parts and not any(part.startswith(".") for part in relative.parts):
            keys.append(relative.as_posix())
    return sorted(keys)


def _read_tables(directory: Path) -> dict[str, pd.DataFrame]:
    tables: dict[str, pd.DataFrame] = {}
    for path in _visible(directory, *TABLE_SUFFIXES):
        if path.stem in tables:
            raise ResultsError(f"{directory} has both {path.stem}.csv and .parquet")
        tables[path.stem] = _read_table(path)
    return tables


def _visible(directory: Path, *suffixes: str) -> list[Path]:
    """Files directly in `directory` with one of `suffixes`, skipping hidden ones (the
    output marker, staging leftovers)."""
    return [
        path
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix in suffixes and not path.name.startswith(".")
    ]


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _read_json(path: Path) -> dict[str, Any]:
    payload = json.loads(path.read_text())
    if not isinstance(payload, dict):
        raise ResultsError(f"{path} is not a JSON object")
    return payload
