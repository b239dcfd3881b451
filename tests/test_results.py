"""`simulator.results`: run and experiment directories as DataFrames, read from the files
the CLI writes and from hand-made layouts of other experiments."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpufleet.cli import main
from policies import make_policy
from simulator.metrics import JOB_COLUMNS
from simulator.results import ResultsError, ecdf, load_experiment, load_run
from simulator.run import RunConfig, simulate
from tests.conftest import job, node

NODES = [node("a0", gpus=4, model="A100"), node("v0", gpus=4, model="V100")]
JOBS = [
    job("j0", gpus=4, submit=0.0, duration=100.0),
    job("j1", gpus=4, submit=0.0, duration=50.0),
    job("j2", gpus=2, submit=10.0, duration=40.0),
    job("j3", gpus=4, submit=20.0, duration=10.0),
]


def run_dir(tmp_path: Path, policy: str = "fifo", name: str | None = None) -> Path:
    config = RunConfig(trace="hand", trace_format="canonical", cluster="two", policy=policy)
    out = tmp_path / (name or policy)
    simulate(config, NODES, JOBS, make_policy(policy), out)
    return out


def test_load_run_reads_jobs_timeline_config_and_summary(tmp_path: Path) -> None:
    run = load_run(run_dir(tmp_path, "bestfit"))
    assert list(run.jobs.columns[: len(JOB_COLUMNS)]) == list(JOB_COLUMNS)
    assert sorted(run.jobs["job_id"]) == ["j0", "j1", "j2", "j3"]
    assert run.policy == "bestfit"
    assert run.config["policy_config"]["policy"] == "bestfit"
    assert run.summary["completed"] == 4
    assert run.gpu_models == ["A100", "V100"]
    assert run.timeline["alloc_gpu_pct"].between(0, 100).all()
    assert len(run.completed_jobs()) == 4
    assert run.tables == {}


def test_load_run_keeps_extra_tables_by_stem(tmp_path: Path) -> None:
    path = run_dir(tmp_path)
    pd.DataFrame({"stream": ["s0"], "accuracy": [0.9]}).to_parquet(path / "streams.parquet")
    (path / "rounds.csv").write_text("round,solve_s\n0,0.25\n1,0.5\n")
    run = load_run(path)
    assert set(run.tables) == {"streams", "rounds"}
    assert run.tables["rounds"]["solve_s"].sum() == pytest.approx(0.75)


def test_load_run_names_missing_files(tmp_path: Path) -> None:
    path = run_dir(tmp_path)
    (path / "timeline.parquet").unlink()
    (path / "summary.json").unlink()
    with pytest.raises(ResultsError, match=r"no timeline\.parquet, summary\.json"):
        load_run(path)


def test_load_experiment_reads_compare_output(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--jobs", "20", "--gpus", "16", "--policies", "fifo,las", "--out"]
    assert main([*argv, str(out), "--no-progress"]) == 0
    study = load_experiment(out)
    assert set(study.runs) == {"fifo", "las"}
    assert list(study.summary["policy"]) == ["fifo", "las"]
    assert set(study.tables) == {"summary"}
    jobs = study.jobs()
    assert len(jobs) == 40
    assert jobs.groupby("policy")["job_id"].nunique().to_dict() == {"fifo": 20, "las": 20}
    assert (jobs["run"] == jobs["policy"]).all()
    timeline = study.timeline(config_keys=("policy", "seed"))
    assert set(timeline["seed"]) == {0}
    assert len(timeline) == sum(len(r.timeline) for r in study.runs.values())


def test_nested_runs_are_keyed_by_relative_path(tmp_path: Path) -> None:
    root = tmp_path / "hetero"
    run_dir(root / "fifo", "fifo", name="seed-1")
    run_dir(root / "las", "las", name="seed-1")
    (root / "config.json").write_text(json.dumps({"cluster": "two", "seeds": [1]}))
    study = load_experiment(root)
    assert list(study.runs) == ["fifo/seed-1", "las/seed-1"]
    assert study.config == {"cluster": "two", "seeds": [1]}
    summary = study.summary  # no summary.csv: built from the runs
    assert list(summary["run"]) == ["fifo/seed-1", "las/seed-1"]
    assert list(summary["policy"]) == ["fifo", "las"]


def test_hidden_staging_directories_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    run_dir(root, "fifo")
    run_dir(root, "las", name=".las.tmp123")
    assert list(load_experiment(root).runs) == ["fifo"]


def test_table_only_experiment(tmp_path: Path) -> None:
    root = tmp_path / "inflation"
    root.mkdir()
    (root / "curves.csv").write_text("policy,arrived_pct,alloc_pct\nfgd,0,0.0\nfgd,1,0.9\n")
    (root / "summary.csv").write_text("policy,alloc_pct_mean\nfgd,0.9\n")
    (root / "failures.csv").write_text("policy,task_class,failed\n")
    study = load_experiment(root)
    assert study.runs == {}
    assert study.table("curves")["alloc_pct"].tolist() == [0.0, 0.9]
    assert study.table("failures").empty
    assert list(study.summary.columns) == ["policy", "alloc_pct_mean"]
    with pytest.raises(KeyError, match="tables: curves, failures, summary"):
        study.table("cluster")
    with pytest.raises(ResultsError, match="no run directories and no jobs table"):
        study.jobs()


def test_flat_experiment_tables_stand_in_for_runs(tmp_path: Path) -> None:
    """Hetero's layout: every run's rows in one top-level table, labelled per run."""
    root = tmp_path / "hetero"
    root.mkdir()
    (root / "jobs.csv").write_text("workload,policy,job_id,jct_s\nw1,sia,a,10\nw1,fifo,a,30\n")
    (root / "calibration.json").write_text(json.dumps({"delta_ms": 0.145}))
    study = load_experiment(root)
    assert study.jobs().groupby("policy")["jct_s"].sum().to_dict() == {"fifo": 30, "sia": 10}
    assert study.documents == {"calibration": {"delta_ms": 0.145}}
    assert study.config == {}
    with pytest.raises(ResultsError, match="no timeline table"):
        study.timeline()


def test_stacked_reads_a_per_run_table(tmp_path: Path) -> None:
    root = tmp_path / "continual"
    for policy, accuracy in (("fifo", 0.7), ("las", 0.8)):
        path = run_dir(root / "light", policy)
        pd.DataFrame({"stream_id": ["s0", "s1"], "mean_acc": [accuracy] * 2}).to_parquet(
            path / "streams.parquet"
        )
    study = load_experiment(root)
    streams = study.stacked("streams")
    assert streams.groupby("run")["mean_acc"].mean().to_dict() == {
        "light/fifo": 0.7,
        "light/las": 0.8,
    }
    assert set(streams["policy"]) == {"fifo", "las"}
    with pytest.raises(ResultsError, match="has no rounds table"):
        study.stacked("rounds")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "is not a directory"),
        ("empty", "holds no result tables and no run directories"),
        ("duplicate", r"has both summary.csv and .parquet"),
    ],
)
def test_load_experiment_rejects_non_results(tmp_path: Path, setup: str, message: str) -> None:
    root = tmp_path / "exp"
    if setup != "missing":
        root.mkdir()
    if setup == "duplicate":
        (root / "summary.csv").write_text("a\n1\n")
        pd.DataFrame({"a": [1]}).to_parquet(root / "summary.parquet")
    with pytest.raises(ResultsError, match=f"^{re.escape(str(root))} {message}"):
        load_experiment(root)


def test_ecdf_sorts_and_drops_missing() -> None:
    cdf = ecdf(pd.Series([3.0, None, 1.0, 2.0, 2.0]))
    assert cdf["value"].tolist() == [1.0, 2.0, 2.0, 3.0]
    assert cdf["fraction"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert ecdf(np.array([])).empty


def test_results_reads_files_only() -> None:
    """The module must not reach into simulator or policy internals."""
    source = Path(__file__).parents[1] / "simulator" / "results.py"
    imported = set()
    for stmt in ast.walk(ast.parse(source.read_text())):
        if isinstance(stmt, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in stmt.names}
        elif isinstance(stmt, ast.ImportFrom) and stmt.module:
            imported.add(stmt.module.split(".")[0])
    assert imported.isdisjoint({"simulator", "policies", "traces", "controller"})
