"""Continual traces: the streams file round-trips, the generator is seeded, bad input is one
clear error, and `generate_continual_trace` writes streams and mixed batch jobs."""

from __future__ import annotations

import argparse
import csv
import re
from dataclasses import replace
from pathlib import Path

import pytest

from traces import TraceError, canonical
from traces.continual import (
    STREAM_COLUMNS,
    ContinualSpec,
    add_continual_generate_arguments,
    batch_path,
    generate_continual_trace,
    generate_streams,
    load_continual,
    read_streams,
    write_streams,
)
from traces.synthetic import SyntheticSpec, generate_jobs


def test_streams_round_trip(tmp_path: Path) -> None:
    streams = generate_streams(ContinualSpec(streams=5, windows=7), seed=3)
    path = tmp_path / "streams.csv"
    assert write_streams(streams, path) == 5
    assert read_streams(path) == streams


def test_a_cron_stream_round_trips_with_its_epoch(tmp_path: Path) -> None:
    (stream,) = generate_streams(ContinualSpec(streams=1, windows=3), seed=0)
    cron = replace(stream, window_s=0.0, deadline_s=20.0, cron="5,40 * * * * *", epoch_s=1e9)
    path = tmp_path / "streams.csv"
    write_streams([cron, replace(stream, id="periodic")], path)
    read = read_streams(path)
    assert read == [cron, replace(stream, id="periodic")]
    # 10^9 s after the Unix epoch is 01:46:40 UTC, a firing itself; then 01:47:05, :40.
    assert [read[0].window_start(i) for i in range(3)] == [0.0, 25.0, 60.0]


def test_generator_is_seeded_and_follows_the_spec() -> None:
    spec = ContinualSpec(streams=30, windows=4, deadline_fraction=0.5, request_milli=500)
    first = generate_streams(spec, seed=1)
    assert first == generate_streams(spec, seed=1)
    assert first != generate_streams(spec, seed=2)
    assert all(s.deadline_s == 300.0 and s.task.gpu_milli == 500 for s in first)
    assert all(s.curve.floor < s.curve.ceiling for s in first)
    # The config family scales with each stream's h: cheap < medium < expensive.
    assert all(
        s.configs[0].work_gpu_s < s.configs[1].work_gpu_s < s.configs[2].work_gpu_s for s in first
    )


def _write_row(path: Path, **changes: str) -> None:
    stream = generate_streams(ContinualSpec(streams=1, windows=2), seed=0)
    write_streams(stream, path)
    with path.open() as handle:
        row = next(csv.DictReader(handle))
    row.update(changes)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=STREAM_COLUMNS)
        writer.writeheader()
        writer.writerow(row)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("configs", "cheap=ten:0.5", "field 'configs': expected name=work:quality"),
        ("throughput", "a100", "field 'throughput': expected NAME=number >= 0"),
        ("windows", "-1", "field 'windows': -1 is below 0"),
        ("ceiling", "0.2", "accuracy curve needs 0 <= floor <= ceiling <= 1"),
        ("deadline_s", "9999", "need 0 < deadline_s <= window_s"),
        ("cron", "3,61 * * * * *", "field 'cron': cron second field '3,61': values must lie"),
        ("cron", "* * *", "field 'cron': cron schedule '\\* \\* \\*' needs 5 fields"),
        ("cron", "*/5 * * * *", "a cron stream's windows open at its firings"),
    ],
)
def test_bad_stream_rows_are_one_line_errors(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    _write_row(path, **{field: value})
    with pytest.raises(TraceError, match=f"^{re.escape(str(path))}:2: .*{message}") as err:
        read_streams(path)
    assert "\n" not in str(err.value)


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    add_continual_generate_arguments(parser)
    return parser.parse_args(["--out", str(tmp_path / "trace.csv"), *extra])


def test_generate_writes_streams_and_mixed_batch_jobs(tmp_path: Path) -> None:
    args = _args(tmp_path, "--streams", "4", "--windows", "6", "--mix-jobs", "50")
    assert generate_continual_trace(args) == 0
    streams, batch = load_continual(tmp_path / "trace.csv")
    assert len(streams) == 4 and all(s.windows == 6 for s in streams)
    assert batch_path(tmp_path / "trace.csv") == tmp_path / "trace.batch.csv"
    # Only batch jobs submitted within the streams' span are kept.
    assert batch and all(j.submit_time < 6 * 600 for j in batch)


def test_mixing_from_a_trace_file(tmp_path: Path) -> None:
    jobs = generate_jobs(SyntheticSpec(num_jobs=20, jobs_per_hour=60), seed=4)
    canonical.write_jobs(jobs, tmp_path / "jobs.csv")
    args = _args(
        tmp_path, "--streams", "2", "--windows", "3", "--mix-trace", str(tmp_path / "jobs.csv")
    )
    generate_continual_trace(args)
    _, batch = load_continual(tmp_path / "trace.csv")
    assert [j.id for j in batch] == [j.id for j in jobs if j.submit_time < 1800]


def test_generate_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need at least one stream and window"):
        generate_continual_trace(_args(tmp_path, "--streams", "0"))
    assert not (tmp_path / "trace.csv").exists()
