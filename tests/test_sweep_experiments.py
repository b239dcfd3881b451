"""The experiments with their own commands (hetero, continual, rap) run as sweep cells:
a sweep spec naming the experiment gives the command's result table, the command gives
the same results on one process or several, and a run that fails is recorded while the
others finish (the command then says which; continual leaves the run out)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from gpufleet.cli import main
from simulator.experiments import continual, hetero, rap_cluster
from simulator.sweep.spec import SpecError, load_spec
from tests.conftest import shared_data
from tests.test_hetero_experiment import invented_data as sia_workloads
from tests.test_rap_experiment import invented_data as rap_profiles
from tests.test_sweep import run_files, table_without_timing

HETERO_METRICS = ("jobs", "avg_jct_h", "p99_jct_h", "makespan_h", "gpu_hours_per_job")
CONTINUAL_METRICS = ("mean_accuracy", "deadline_miss_rate", "gpu_hours", "avg_jct_h")
RAP_METRICS = ("completed", "jobs_per_h", "gpu_util", "avg_jct_h", "dlrm_speed_vs_ideal")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def sweep(tmp_path: Path, spec: str, name: str = "sweep", workers: str = "2") -> Path:
    """Run `spec` with `gpufleet sweep` on `workers` local processes; its output folder."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(spec)
    out = tmp_path / name
    main(["sweep", str(path), "--out", str(out), "--workers", workers])
    return out


def figures(rows: list[dict[str, str]], names: tuple[str, ...]) -> list[tuple[float, ...]]:
    return [tuple(float(row[name] or "nan") for name in names) for row in rows]


def failing(original: Callable[..., Any], fails: Callable[..., bool]) -> Callable[..., Any]:
    """`original`, raising instead for the calls `fails` picks (a run that breaks)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if fails(*args, **kwargs):
            raise RuntimeError("this run breaks on purpose")
        return original(*args, **kwargs)

    return call


# -- hetero -------------------------------------------------------------------------------


def hetero_command(tmp_path: Path, workloads: Path, out: str, *extra: str) -> list[str]:
    argv = ["experiment", "hetero", "--workloads", str(workloads), "--out", str(tmp_path / out)]
    return [*argv, "--cluster", "sia-homog-64", "--policies", "sia,gavel,fifo", *extra]


def test_hetero_spec_gives_the_commands_table(tmp_path: Path) -> None:
    workloads = sia_workloads(tmp_path / "data")
    assert main(hetero_command(tmp_path, workloads, "one", "--workers", "1")) == 0
    assert main(hetero_command(tmp_path, workloads, "two", "--workers", "2")) == 0
    command = read_csv(tmp_path / "one/summary.csv")
    assert command == read_csv(tmp_path / "two/summary.csv")
    assert read_csv(tmp_path / "one/jobs.csv") == read_csv(tmp_path / "two/jobs.csv")

    swept = sweep(
        tmp_path,
        f"experiment: hetero\ntraces: [{{path: {workloads}/w-1.csv, format: sia}}]\n"
        "cluster: {name: sia-homog-64}\npolicies: [sia, gavel, fifo]\n",
    )
    table = read_csv(swept / "results.csv")
    assert [(r["trace"], r["policy"], r["status"]) for r in table] == [
        ("w-1", p, "ok") for p in ("sia", "gavel", "fifo")
    ]
    assert figures(table, HETERO_METRICS) == figures(command, HETERO_METRICS)
    jobs = [r for r in read_csv(tmp_path / "one/jobs.csv") if r["policy"] == "gavel"]
    cell_jobs = read_csv(swept / table[1]["run_dir"] / "jobs.csv")
    assert [{**r, "workload": ""} for r in cell_jobs] == [{**r, "workload": ""} for r in jobs]


def test_hetero_spec_runs_a_gavel_window_as_the_command(tmp_path: Path) -> None:
    table = {
        worker: {"('ResNet-18 (batch size 16)', 1)": {"null": speed}}
        for worker, speed in (("v100", 4.0), ("p100", 2.0), ("k80", 1.0))
    }
    (tmp_path / "throughputs.json").write_text(json.dumps(table))
    argv = ["experiment", "hetero", "--gavel-traces", "1", "--gavel-window", "3-6"]
    argv += ["--gavel-file", str(tmp_path / "throughputs.json"), "--gavel-rate", "2"]
    argv += ["--cluster", "gavel-108", "--policies", "gavel", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    swept = sweep(
        tmp_path,
        "experiment: hetero\ntraces:\n  - name: gavel\n    generate: "
        "{throughputs: throughputs.json, rate: 2, seed: 0, window: 3-6}\n"
        "cluster: {name: gavel-108}\npolicies: [gavel]\n",
    )
    command = read_csv(tmp_path / "out/summary.csv")
    assert command[0]["jobs"] == "3"  # the window's jobs only
    assert figures(read_csv(swept / "results.csv"), HETERO_METRICS) == figures(
        command, HETERO_METRICS
    )


def test_hetero_failing_run_is_recorded_and_the_others_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workloads = sia_workloads(tmp_path / "data")
    breaks = failing(hetero.Simulation, lambda nodes, jobs, policy, options: policy.name == "gavel")
    monkeypatch.setattr(hetero, "Simulation", breaks)
    assert main(hetero_command(tmp_path, workloads, "out", "--workers", "1")) == 2
    err = capsys.readouterr().err
    assert "[3/3]" in err  # the run after the failed one ran too
    assert "1 of 3 runs failed; first: trace=tiny/w-1 policy=gavel" in err
    assert not (tmp_path / "out").exists()
    swept = sweep(
        tmp_path,
        f"experiment: hetero\ntraces: [{{path: {workloads}/w-1.csv, format: sia}}]\n"
        "cluster: {name: sia-homog-64}\npolicies: [sia, gavel, fifo]\n",
        workers="1",
    )
    table = read_csv(swept / "results.csv")
    assert [r["status"] for r in table] == ["ok", "failed", "ok"]
    assert table[1]["error"] == "RuntimeError: this run breaks on purpose"
    assert all(float(r["avg_jct_h"]) > 0 for r in (table[0], table[2]))


# -- continual -----------------------------------------------------------------------------

CONTINUAL_SPEC = """\
experiment: continual
traces:
  - name: light
    generate: {scenario: light, windows: 2}
policies:
  - fifo
  - name: thief
    options: {choose_configs: false}
"""


def continual_command(tmp_path: Path, out: str, workers: str) -> list[str]:
    argv = ["experiment", "continual", "--out", str(tmp_path / out), "--workers", workers]
    policies = "fifo,thief:choose_configs=false"
    return [*argv, "--windows", "2", "--scenarios", "light", "--policies", policies]


def test_continual_spec_gives_the_commands_table(tmp_path: Path) -> None:
    assert main(continual_command(tmp_path, "one", "1")) == 0
    assert main(continual_command(tmp_path, "two", "2")) == 0
    command = read_csv(tmp_path / "one/summary.csv")
    assert command == read_csv(tmp_path / "two/summary.csv")
    swept = sweep(tmp_path, CONTINUAL_SPEC)
    table = read_csv(swept / "results.csv")
    assert [(r["trace"], r["policy"]) for r in table] == [
        ("light", "fifo"),
        ("light", "thief:choose_configs=false"),
    ]
    assert figures(table, CONTINUAL_METRICS) == figures(command, CONTINUAL_METRICS)
    for row, folder in zip(table, ("fifo", "thief_choose_configs=false"), strict=True):
        cell = pq.read_table(swept / row["run_dir"] / "streams.parquet")
        assert cell.equals(pq.read_table(tmp_path / "one/light" / folder / "streams.parquet"))


def test_continual_failing_run_is_left_out_and_the_others_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    breaks = failing(continual.simulate_continual, lambda config, *_, **__: config.policy == "fifo")
    monkeypatch.setattr(continual, "simulate_continual", breaks)
    assert main(continual_command(tmp_path, "out", "1")) == 0
    assert (
        "light fifo: skipped (RuntimeError: this run breaks on purpose)" in capsys.readouterr().err
    )
    summary = read_csv(tmp_path / "out/summary.csv")
    assert [r["policy"] for r in summary] == ["thief:choose_configs=false"]
    assert not (tmp_path / "out/light/fifo").exists()
    table = read_csv(sweep(tmp_path, CONTINUAL_SPEC, workers="1") / "results.csv")
    assert [r["status"] for r in table] == ["failed", "ok"]
    assert float(table[1]["mean_accuracy"]) > 0


# -- rap ---------------------------------------------------------------------------------------


def rap_spec(data: Path) -> str:
    return (
        "experiment: rap\ntraces:\n  - name: two-per-hour\n"
        f"    generate: {{data: {data}, jobs: 25, rate: 2, host_slowdown: 0.05}}\n"
        "policies: [no_sharing, cross_job]\nseeds: 0-1\n"
    )


def rap_command(tmp_path: Path, data: Path, out: str, workers: str) -> list[str]:
    argv = ["experiment", "rap", "--out", str(tmp_path / out), "--data", str(data)]
    argv += ["--jobs", "25", "--seeds", "2", "--rates", "2", "--host-slowdowns", "0.05"]
    return [*argv, "--workers", workers]


def test_rap_spec_gives_the_commands_runs(tmp_path: Path) -> None:
    data = rap_profiles(tmp_path)
    assert main(rap_command(tmp_path, data, "one", "1")) == 0
    assert main(rap_command(tmp_path, data, "two", "2")) == 0
    runs = read_csv(tmp_path / "one/cluster_runs.csv")
    assert runs == read_csv(tmp_path / "two/cluster_runs.csv")
    assert read_csv(tmp_path / "one/cluster.csv") == read_csv(tmp_path / "two/cluster.csv")
    table = read_csv(sweep(tmp_path, rap_spec(data)) / "results.csv")
    chosen = [r for r in runs if r["policy"] in ("no_sharing", "cross_job")]
    assert [(r["policy"], r["seed"]) for r in table] == [(r["policy"], r["seed"]) for r in chosen]
    assert [r["host_slowdown"] for r in table] == ["", "", "0.05", "0.05"]
    assert figures(table, RAP_METRICS) == figures(chosen, RAP_METRICS)
    assert len({r["avg_jct_h"] for r in table}) > 1  # seeds and settings differ


def test_rap_failing_run_is_recorded_and_the_others_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = rap_profiles(tmp_path)
    breaks = failing(rap_cluster.simulate, lambda config, *_: config.seed == 1)
    monkeypatch.setattr(rap_cluster, "simulate", breaks)
    assert main(rap_command(tmp_path, data, "out", "1")) == 2
    err = capsys.readouterr().err
    assert "[10/10]" in err and "5 of 10 runs failed" in err
    assert not (tmp_path / "out").exists()
    table = read_csv(sweep(tmp_path, rap_spec(data), workers="1") / "results.csv")
    assert [(r["seed"], r["status"]) for r in table] == [("0", "ok"), ("1", "failed")] * 2


# -- spec mistakes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hetero\ntraces: [{generate: {rate: 2, speed: 1}}]", r"trace 'synthetic-0' .*'speed'"),
        ("hetero\ntraces: [{generate: {}}]\ncluster: {gpus: 8}", r"cluster\.gpus: .*name, scale"),
        ("continual\ntraces: [{generate: {scenario: medium}}]", "unknown scenario 'medium'"),
        ("continual\ntraces: [{path: spec.yaml, format: csv}]", "format: continual"),
        ("rap\ntraces: [{generate: {data: DATA, rate: 0}}]", "rate positive"),
        (
            "rap\ntraces: [{generate: {data: DATA}}]\npolicies: [fifo]",
            r"policies\[0\]: .*not 'fifo'",
        ),
    ],
)
def test_experiment_spec_mistakes_name_their_field(tmp_path: Path, text: str, message: str) -> None:
    data = rap_profiles(tmp_path)
    text = f"experiment: {text.replace('DATA', str(data))}\n"
    spec = tmp_path / "spec.yaml"
    spec.write_text(text + ("" if "policies" in text else "policies: [fifo]\n"))
    with pytest.raises(SpecError, match=message):
        load_spec(spec)


# -- Ray -----------------------------------------------------------------------------------


def test_experiment_cells_on_ray_give_the_local_results(tmp_path: Path) -> None:
    """On a local Ray instance (2 CPUs): `experiment rap --executor ray` writes the runs
    and summary it writes on one local process, and a continual spec's table (less wall
    and CPU seconds) and run files equal the local sweep's."""
    import ray  # in the test extra: a missing Ray fails this test

    data = rap_profiles(tmp_path)
    assert main(rap_command(tmp_path, data, "rap-local", "1")) == 0
    local = sweep(tmp_path, CONTINUAL_SPEC, "continual-local")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        on_ray = [*rap_command(tmp_path, data, "rap-ray", "2"), "--executor", "ray"]
        assert main(on_ray) == 0
        spec = tmp_path / "continual-local.yaml"
        swept = tmp_path / "continual-ray"
        assert main(["sweep", str(spec), "--out", str(swept), "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    for name in ("cluster_runs.csv", "cluster.csv", "mixed_trace.csv"):
        assert (tmp_path / "rap-local" / name).read_bytes() == (
            tmp_path / "rap-ray" / name
        ).read_bytes()
    assert table_without_timing(local) == table_without_timing(swept)
    assert run_files(local) == run_files(swept)


# -- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "data"),
    [
        pytest.param("sweep-hetero.yaml", "sia/workloads/saturn", marks=pytest.mark.shared_data),
        ("sweep-continual.yaml", None),
        pytest.param("sweep-rap.yaml", "rap", marks=pytest.mark.shared_data),
        pytest.param(
            "sweep-fgd.yaml",
            "alibaba-gpu-2023/openb_node_list_gpu_node.csv",
            marks=pytest.mark.shared_data,
        ),
    ],
)
def test_example_specs_expand_to_their_whole_grid(example: str, data: str | None) -> None:
    """docs/sweeps.md's examples load, and each is the product of its traces, policy
    settings and seeds (every cell distinct)."""
    if data is not None:
        shared_data(data)  # skips when the public data is not there
    plan, _ = load_spec(Path(__file__).parents[1] / "examples" / example)
    traces = {c.params["trace"] for c in plan.cells}
    settings = {json.dumps([c.params["policy"], c.params.get("options")]) for c in plan.cells}
    seeds = {c.params["seed"] for c in plan.cells}
    assert len(plan.cells) == len(traces) * len(settings) * len(seeds) > 1
    assert len({c.key for c in plan.cells}) == len(plan.cells)
