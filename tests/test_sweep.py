"""The sweep runner: spec errors name their field, cells are keyed by their inputs,
a killed sweep resumes with only the missing cells, a failing cell is recorded while
the others finish, and local processes and Ray give identical tables and run files."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gpufleet.cli import main
from simulator.sweep import executors
from simulator.sweep.cells import Cell, CellOutput, make_cell
from simulator.sweep.executors import LocalExecutor, RayExecutor
from simulator.sweep.runner import run_cells
from simulator.sweep.spec import SpecError, load_spec
from simulator.sweep.store import TIMING_COLUMNS, CellStore
from traces.canonical import write_jobs
from traces.synthetic import SyntheticSpec, generate_jobs

REPO = Path(__file__).parents[1]

SPEC_24 = """\
traces:
  - name: light
    generate: {jobs: 40, rate: 6, seed: 1}
  - name: busy
    generate: {jobs: 40, rate: 30, seed: 2, sharing_fraction: 0.5}
cluster: {nodes: 4, models: [A100, V100]}
policies:
  - fifo
  - random
  - name: bestfit
    options: {blocking: [true, false]}
seeds: 0-2
"""
"""2 traces × 4 policy settings × 3 seeds = 24 small cells (random-fit uses the seed)."""


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def table_without_timing(out: Path) -> str:
    """results.csv without the measured columns (wall and CPU seconds)."""
    rows = list(csv.reader(io.StringIO((out / "results.csv").read_text())))
    keep = [i for i, name in enumerate(rows[0]) if name not in TIMING_COLUMNS]
    return "\n".join(",".join(row[i] for i in keep) for row in rows)


def run_files(out: Path) -> dict[str, bytes]:
    """Every file of every cell directory; result.json without its timings."""
    files = {}
    for path in sorted((out / "cells").rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name == "result.json":
            record = json.loads(data)
            for name in TIMING_COLUMNS:
                record.pop(name)
            data = json.dumps(record, sort_keys=True).encode()
        files[path.relative_to(out).as_posix()] = data
    return files


# -- spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("traces: []\n", r"sweep spec: traces: expected a list"),
        (
            "traces: [{generate: {jobs: 5}}]\npolicies: [fifo, {name: nosuch}]\n",
            r"policies\[1\]: .*nosuch",
        ),
        (
            "traces: [{generate: {jobs: 5}}]\npolicies: [{name: fifo, options: {colour: red}}]\n",
            r"policies\[0\]: .*colour",
        ),
        ("traces: [{path: missing-*.csv}]\npolicies: [fifo]\n", r"traces\[0\]\.path: no file"),
        ("traces: [{generate: {jobs: 5, speed: 2}}]\npolicies: [fifo]\n", r"speed"),
        ("traces: [{generate: {jobs: 5}}]\npolicies: [fifo]\nseeds: 5-2\n", r"seeds: empty"),
        ("traces: [{generate: {}}]\npolicies: [fifo]\nsettings: {speed: 1}\n", r"settings\.speed"),
        ("traces: [{generate: {}}]\npolicies: [fifo]\nmetrics: [avg_jct]\n", r"metrics: .*avg_jct"),
        ("traces: [{generate: {}}]\npolicies: [fifo]\ncluster: {gpus: 8, nodes: 2}\n", r"cluster"),
        ("trace: []\n", r"sweep spec: trace: unknown key"),
    ],
)
def test_spec_mistakes_name_their_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(tmp_path, text))


def test_grid_expands_options_and_seeds_in_order(tmp_path: Path) -> None:
    plan, _ = load_spec(write_spec(tmp_path, SPEC_24))
    cells = plan.cells
    assert len(cells) == 24 and len({c.key for c in cells}) == 24
    assert [c.params["trace"] for c in cells[:12]] == ["light"] * 12
    assert [(c.params["policy"], c.params["options"], c.params["seed"]) for c in cells[6:9]] == [
        ("bestfit", {"blocking": True}, 0),
        ("bestfit", {"blocking": True}, 1),
        ("bestfit", {"blocking": True}, 2),
    ]


def test_cell_key_changes_with_any_input_and_only_then(tmp_path: Path) -> None:
    trace = tmp_path / "jobs.csv"
    write_jobs(generate_jobs(SyntheticSpec(num_jobs=5)), trace)
    spec = "traces: [jobs.csv]\npolicies: [fifo]\nseeds: 0\n"
    first = load_spec(write_spec(tmp_path, spec))[0].cells[0].key
    assert load_spec(write_spec(tmp_path, spec))[0].cells[0].key == first
    assert load_spec(write_spec(tmp_path, spec.replace("0\n", "1\n")))[0].cells[0].key != first
    trace.write_text(trace.read_text().replace("job-00004", "job-x"))
    assert load_spec(write_spec(tmp_path, spec))[0].cells[0].key != first
    base = make_cell("m:f", {"a": 1}, {"trace": "t"}, {"t": "d1"})
    assert make_cell("m:f", {"a": 1}, {"trace": "t"}, {"t": "d1"}).key == base.key
    assert make_cell("m:f", {"a": 2}, {"trace": "t"}, {"t": "d1"}).key != base.key
    assert make_cell("m:f", {"a": 1}, {"trace": "t"}, {"t": "d2"}).key != base.key
    assert make_cell("m:g", {"a": 1}, {"trace": "t"}, {"t": "d1"}).key != base.key


# -- resume and failure ---------------------------------------------------------------------


def test_killed_sweep_resumes_with_only_the_missing_cells(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC_24.replace("jobs: 40", "jobs: 300"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gpufleet.cli", "sweep", str(spec), "--out", str(out)]
    process = subprocess.Popen([*command, "--workers", "1"], cwd=REPO)
    deadline = time.monotonic() + 300
    while len(list(out.glob("cells/*/result.json"))) < 3:
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.parent.name for p in out.glob("cells/*/result.json")}
    assert 3 <= len(finished) < 24
    assert not (out / "results.csv").exists()

    plan, _ = load_spec(spec)
    report = run_cells(plan.cells, plan.inputs, LocalExecutor(2), CellStore(out), progress=False)
    assert report.reused == len(finished) and report.ran == 24 - len(finished)
    assert set(report.payloads) == {c.key for c in plan.cells if c.key[:16] not in finished}
    assert all(r["status"] == "ok" for r in report.records)

    again = run_cells(plan.cells, plan.inputs, LocalExecutor(2), CellStore(out), progress=False)
    assert again.ran == 0 and again.reused == 24
    assert again.records == report.records


TWO_TRACES = {"trace:a": [1, 2, 3], "trace:b": [1]}
"""Inputs of the failure tests' cells: a trace of 3 jobs and one of 1."""


def two_traces_four_seeds(task: str) -> list[Cell]:
    """Cells of `task` on traces a and b, seeds 0-3 each, in that order."""
    digests = {"trace:a": "a", "trace:b": "b"}
    return [
        make_cell(task, {"trace": t, "seed": s}, {"trace": f"trace:{t}"}, digests)
        for t in "ab"
        for s in range(4)
    ]


def explode_on_seed_one(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """A task for the failure test: seed 1 fails, the others report their seed."""
    if params["seed"] == 1:
        raise RuntimeError(f"cell with seed 1 on {params['trace']} fails on purpose")
    return CellOutput({"seed_twice": 2 * params["seed"], "jobs": len(inputs["trace"])})


def test_failing_cell_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    task = f"{__name__}:explode_on_seed_one"
    cells = two_traces_four_seeds(task)
    inputs = TWO_TRACES
    log = io.StringIO()
    store = CellStore(tmp_path / "out")
    report = run_cells(cells, inputs, LocalExecutor(2), store, progress=False, log=log)
    assert [r["status"] for r in report.records] == ["ok", "failed", "ok", "ok"] * 2
    assert [r["metrics"].get("seed_twice") for r in report.records] == [0, None, 4, 6] * 2
    assert [r["metrics"].get("jobs") for r in report.records] == [3, None, 3, 3, 1, None, 1, 1]
    assert report.records[1]["error"] == "RuntimeError: cell with seed 1 on a fails on purpose"
    assert "fails on purpose" in log.getvalue()
    error_file = store.directory(cells[5].key) / "error.txt"
    assert "explode_on_seed_one" in error_file.read_text()  # the traceback is kept

    rerun = run_cells(cells, inputs, LocalExecutor(2), store, progress=False, log=log)
    assert rerun.ran == 2 and rerun.reused == 6  # only the failed cells run again


def test_sweep_command_writes_table_and_run_directories(tmp_path: Path) -> None:
    write_jobs(generate_jobs(SyntheticSpec(num_jobs=8)), tmp_path / "jobs.csv")
    spec = write_spec(tmp_path, "traces: [jobs.csv]\npolicies: [fifo, bestfit]\n")
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["policy"], r["status"], r["jobs"]) for r in rows] == [
        ("fifo", "ok", "8"),
        ("bestfit", "ok", "8"),
    ]
    for row in rows:
        summary = json.loads((out / row["run_dir"] / "summary.json").read_text())
        assert summary["avg_jct_s"] == float(row["avg_jct_s"])
    assert (out / "spec.yaml").read_text() == spec.read_text()


# -- executors ------------------------------------------------------------------------------


def test_local_and_ray_give_identical_tables_and_run_files(tmp_path: Path) -> None:
    """24 cells on 2 local processes and on a local Ray instance (ray.init with 2 CPUs):
    the table (less wall and CPU seconds) and every cell's files are byte for byte equal."""
    import ray  # in the test extra: a missing Ray fails this test

    spec = write_spec(tmp_path, SPEC_24)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["sweep", str(spec), "--out", str(local), "--workers", "2"]) == 0
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        assert main(["sweep", str(spec), "--out", str(on_ray), "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    table = table_without_timing(local)
    assert table == table_without_timing(on_ray)
    assert len(table.splitlines()) == 25
    assert run_files(local) == run_files(on_ray)
    results = list(csv.DictReader((local / "results.csv").open()))
    random_jct = {r["avg_jct_s"] for r in results if r["policy"] == "random"}
    assert len(random_jct) > 1  # seeds matter, so equal tables are not equal by accident
    assert os.path.getsize(local / "results.parquet") > 0


def test_cell_process_asks_again_for_an_input_it_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker's cell process keeps the latest INPUT_ENTRIES inputs. A cell naming
    one it let go gets the missing id back instead of an outcome, and runs once it comes."""
    monkeypatch.setattr(executors, "_CHILD_INPUTS", OrderedDict())
    monkeypatch.setattr(executors, "INPUT_ENTRIES", 2)
    task = f"{__name__}:explode_on_seed_one"
    cell = make_cell(task, {"trace": "a", "seed": 0}, {"trace": "trace:a"}, {"trace:a": "a"})

    def run(ident: str, new: dict[str, Any]) -> object:
        result = executors._execute_in_child(cell, {"trace:a": ident}, new)
        return result if isinstance(result, set) else result.metrics["jobs"]

    assert run("a", {"a": [1, 2, 3]}) == 3
    assert run("a", {}) == 3  # held: sent once
    assert run("b", {"b": [1]}) == 1
    assert run("c", {"c": [1, 2]}) == 2  # two newer inputs push "a" out
    assert run("a", {}) == {"a"}
    assert run("a", {"a": [1, 2, 3]}) == 3


def die_on_seed_one(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """A task for the Ray test: seed 1 kills the process it runs in, the others report
    that process, its parent's name, and their input."""
    if params["seed"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")[0].decode()
    return CellOutput({"pid": os.getpid(), "parent": parent, "jobs": len(inputs["trace"])})


def test_ray_cells_run_in_child_processes_that_may_die(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Ray each cell runs in a child process of its Ray worker (cells run slower in a
    Ray worker itself; see simulator/sweep/executors.py). A cell that kills that process fails
    alone: the others finish, a new child gets the inputs again, and once the sweep is
    over no child outlives it."""
    here = str(Path(__file__).parent)  # Ray's processes import this module's task
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    task = f"{__name__}:die_on_seed_one"
    cells = two_traces_four_seeds(task)
    inputs = TWO_TRACES
    report = run_cells(cells, inputs, RayExecutor(None, 2), progress=False, log=io.StringIO())
    assert [r["status"] for r in report.records] == ["ok", "failed", "ok", "ok"] * 2
    assert "cell process died" in report.records[1]["error"]
    ok = [r["metrics"] for r in report.records if r["status"] == "ok"]
    assert [m["jobs"] for m in ok] == [3, 3, 3, 1, 1, 1]
    assert all(str(m["parent"]).startswith("ray::") for m in ok)
    children = {int(m["pid"]) for m in ok}
    assert os.getpid() not in children
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, "a cell process outlived the sweep"
        time.sleep(0.1)
