"""`gpufleet experiment continual` outputs, and invariants of continual runs under every
share allocator on random small workloads."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import NodeSpec, make_policy
from simulator.continual import STREAM_COLUMNS, ContinualRun
from simulator.experiments import continual as experiment
from simulator.metrics import JOB_COLUMNS
from traces.continual import ContinualSpec, generate_streams, write_streams


def _args(out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    return parser.parse_args(["--out", str(out), *extra])


def test_experiment_writes_summary_runs_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "continual"
    args = _args(out, "--windows", "2", "--scenarios", "light", "--policies", "fifo,thief")
    assert experiment.run(args) == 0
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "scenario",
        "policy",
        "mean_accuracy",
        "deadline_miss_rate",
        "gpu_hours",
        "avg_jct_h",
    ]
    assert [(r["scenario"], r["policy"]) for r in rows] == [("light", "fifo"), ("light", "thief")]
    assert all(0 < float(r["mean_accuracy"]) <= 1 for r in rows)
    streams = pq.read_table(out / "light" / "thief" / "streams.parquet")
    assert tuple(streams.column_names) == STREAM_COLUMNS
    assert streams.num_rows == 20 * 2
    assert (out / "accuracy_light.png").stat().st_size > 0
    assert (out / "accuracy_by_policy.png").stat().st_size > 0


def test_experiment_runs_drift_triggered_streams_with_inference(tmp_path: Path) -> None:
    out = tmp_path / "continual"
    flags = ("--trigger-drop", "0.05", "--inference-milli", "100", "--windows", "3")
    args = _args(out, *flags, "--scenarios", "light", "--policies", "fifo,thief")
    assert experiment.run(args) == 0
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(0 < float(r["mean_accuracy"]) <= 1 for r in rows)
    config = (out / "light" / "thief" / "config.json").read_text()
    assert "drift trigger 0.05" in config and "inference 100 milli-GPU" in config


def test_experiment_runs_a_given_trace(tmp_path: Path) -> None:
    trace = tmp_path / "streams.csv"
    write_streams(generate_streams(ContinualSpec(streams=3, windows=2), seed=5), trace)
    out = tmp_path / "continual"
    assert experiment.run(_args(out, "--trace", str(trace), "--policies", "fifo")) == 0
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["scenario"], r["policy"]) for r in rows] == [("trace", "fifo")]
    assert pq.read_table(out / "trace" / "fifo" / "streams.parquet").num_rows == 6


def test_policy_entries_take_options(tmp_path: Path) -> None:
    out = tmp_path / "continual"
    entry = "thief:choose_configs=false"
    args = _args(out, "--windows", "1", "--scenarios", "light", "--policies", entry)
    assert experiment.run(args) == 0
    streams = pq.read_table(out / "light" / "thief_choose_configs=false" / "streams.parquet")
    assert set(streams.column("config").to_pylist()) <= {"medium", ""}  # the default config


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--scenarios", "medium"), r"unknown scenario\(s\) \['medium'\]"),
        (("--policies", "nosuch"), r"unknown policy \['nosuch'\]"),
        (("--policies", "thief:nosuch=1"), "ShareConfig has no option 'nosuch'"),
        (("--policies", "thief:realloc_s"), "policy option 'realloc_s' is not KEY=VALUE"),
        (("--windows", "0"), "--windows must be >= 1"),
    ],
)
def test_experiment_rejects_bad_arguments_without_output(
    tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    out = tmp_path / "continual"
    with pytest.raises(ValueError, match=message):
        experiment.run(_args(out, *extra))
    assert not out.exists()


NODES = [
    NodeSpec("a100-0", 16_000, 65_536, 2, "a100"),
    NodeSpec("t4-0", 16_000, 65_536, 4, "t4"),
]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams=st.integers(1, 12),
    windows=st.integers(1, 4),
    deadline=st.sampled_from([0.5, 1.0]),
    policy=st.sampled_from(["thief", "edf", "fairshare"]),
    seed=st.integers(0, 1000),
)
def test_continual_runs_keep_their_invariants(
    streams: int, windows: int, deadline: float, policy: str, seed: int
) -> None:
    spec = ContinualSpec(
        streams=streams,
        windows=windows,
        deadline_fraction=deadline,
        speeds=(("a100", 1.0), ("t4", 0.145)),
    )
    specs = generate_streams(spec, seed)
    run = ContinualRun(NODES, specs, make_policy(policy))
    recorder = run.run()  # the engine raises if a placement over-commits a GPU
    rows = run.rows
    assert len(rows) == streams * windows
    summary = run.summary()
    floor = min(s.curve.floor for s in specs)
    assert floor <= summary["mean_accuracy"] <= max(s.curve.ceiling for s in specs)
    assert 0.0 <= summary["deadline_miss_rate"] <= 1.0
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    for row in rows:
        if row[col["status"]] == "completed":
            assert row[col["end_s"]] <= row[col["deadline_s"]] + 1e-6  # type: ignore[operator]
    # Every submitted window job ends exactly once, and the cluster is empty at the end.
    ids = [r[JOB_COLUMNS.index("job_id")] for r in recorder.jobs]
    assert len(ids) == len(set(ids)) == summary["retrain_jobs"]
    assert run.sim.cluster.alloc_milli == 0
