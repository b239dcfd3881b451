"""`gpufleet experiment hetero` end to end on a tiny invented workload and profile, plus
the Sia workload reader on good and bad input and (when present) the public data."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simulator.cli import add_simulator_commands
from simulator.clusters import named_cluster
from simulator.experiments import hetero
from simulator.metrics import JOB_COLUMNS
from tests.conftest import shared_data
from traces.errors import TraceError
from traces.sia import read_jobs


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n")


def invented_data(root: Path) -> Path:
    """`root/workloads/tiny/w-1.csv` and a profile for application `toy` on T4 only."""
    rows = ["placement,local_bsz,step_time,sync_time"]
    for placement in ("1", "2", "4", "44"):
        gpus = sum(int(d) for d in placement)
        for bsz in (8, 16, 32):
            sync = 0.0 if gpus == 1 else 0.02 * len(placement)
            rows.append(f"{placement},{bsz},{0.01 + bsz / 1000 + sync:.4f},{sync:.4f}")
    write(root / "traces/toy/placements-aws.csv", "\n".join(rows))
    write(
        root / "traces/toy/scalability-aws.csv",
        "num_nodes,num_replicas,local_bsz,step_time,sync_time\n3,12,16,0.12,0.08",
    )
    for batch, var in ((32, 1.0), (64, 2.0)):
        epochs = "\n".join(f"{200 * e},{100 * e},0.5,1.0,{var}" for e in range(1, 4))
        write(
            root / f"traces/toy/validation-{batch}.csv",
            "progress,iteration,metric,grad_sqr,grad_var\n" + epochs,
        )
    write(
        root / "workloads/tiny/w-1.csv",
        "name,time,application,num_replicas,batch_size\n"
        "toy-0,0,toy,2,32\ntoy-1,30,toy,4,64\ntoy-2,90.5,toy,1,32",
    )
    return root / "workloads/tiny"


def args(tmp_path: Path, workloads: Path, **changes: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    hetero.add_arguments(parser)
    namespace = parser.parse_args(
        ["--workloads", str(workloads), "--out", str(tmp_path / "out"), "--cluster", "sia-homog-64"]
    )
    for key, value in changes.items():
        setattr(namespace, key, value)
    return namespace


def test_experiment_writes_summary_records_and_plots(tmp_path: Path) -> None:
    workloads = invented_data(tmp_path / "data")
    assert hetero.run(args(tmp_path, workloads, policies="sia,gavel,las,fifo")) == 0
    out = tmp_path / "out"
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(hetero.SUMMARY_COLUMNS)
    assert [r["policy"] for r in rows] == ["sia", "gavel", "las", "fifo"]
    assert all(r["workload"] == "tiny/w-1" and r["jobs"] == "3" for r in rows)
    assert all(float(r["avg_jct_h"]) > 0 for r in rows)
    for name in ("jobs.csv", "rounds.csv", "timeline.csv", "policy_timing.csv", "jct_cdf.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "gpus_by_model_sia.png").is_file()
    # FIFO runs jobs rigidly at their TunedJobs size, so it never restarts them.
    assert float(rows[3]["restarts_per_job"]) == 0.0


def test_bad_input_fails_cleanly_without_output(tmp_path: Path) -> None:
    workloads = invented_data(tmp_path / "data")
    with pytest.raises(TraceError, match="no such workload folder"):
        hetero.run(args(tmp_path, tmp_path / "missing"))
    with pytest.raises(KeyError, match="unknown policy"):
        hetero.run(args(tmp_path, workloads, policies="sia,nope"))
    with pytest.raises(ValueError, match="unknown cluster"):
        hetero.run(args(tmp_path, workloads, cluster="mars-8"))
    assert not (tmp_path / "out").exists()


def test_reader_builds_adaptive_or_rigid_jobs(tmp_path: Path) -> None:
    workloads = invented_data(tmp_path / "data")
    jobs = read_jobs(workloads / "w-1.csv", gpu_models=("t4",))
    assert [j.id for j in jobs] == ["toy-0", "toy-1", "toy-2"]
    assert jobs[1].replicas == 4 and jobs[1].attributes["category"] == "adaptive"
    assert jobs[0].allowed_models == {"t4"}
    rigid = read_jobs(workloads / "w-1.csv", mode="rigid", gpu_models=("t4",))
    assert all(j.elastic is None for j in rigid)


def test_reader_names_file_line_and_field(tmp_path: Path) -> None:
    workloads = invented_data(tmp_path / "data")
    bad = workloads / "bad.csv"
    bad.write_text("name,time,application,num_replicas,batch_size\ntoy-0,0,toy,zero,32\n")
    with pytest.raises(TraceError, match=r"bad.csv:2: field 'num_replicas'"):
        read_jobs(bad)
    other = workloads / "other.csv"
    other.write_text("name,time,application,num_replicas,batch_size\nx-0,0,gpt_pmp,8,48\n")
    with pytest.raises(TraceError, match="pipeline-parallel"):
        read_jobs(other)


def test_named_clusters() -> None:
    nodes = named_cluster("sia-64")
    by_model: dict[str, int] = {}
    for n in nodes:
        by_model[n.gpu_model] = by_model.get(n.gpu_model, 0) + n.gpus
    assert by_model == {"t4": 24, "rtx2080ti": 24, "a100": 16}
    assert sum(n.gpus for n in named_cluster("sia-64", scale=32)) == 2048
    assert sum(n.gpus for n in named_cluster("gavel-108")) == 108
    assert sum(n.gpus for n in named_cluster("sia-physical-44")) == 44


@pytest.mark.shared_data
def test_reader_on_the_public_workloads() -> None:
    jobs = read_jobs(shared_data("sia/workloads/saturn/workload-1.csv"))
    assert len(jobs) == 160
    apps = {j.attributes["application"] for j in jobs}
    assert apps <= {"cifar10", "deepspeech2", "bert", "yolov3", "imagenet"}
    assert all(j.allowed_models == {"t4", "v100", "a100", "rtx6000", "rtx2080ti"} for j in jobs)


def simulate_and_experiment(tmp_path: Path, workload: Path, policy: str) -> tuple[dict, dict]:
    """Job rows and summary of one run started by `simulate`, and by `experiment hetero`."""
    solo, sweep = tmp_path / f"simulate-{policy}", tmp_path / f"hetero-{policy}"
    common = ["--cluster", "sia-homog-64", "--seed", "0"]
    assert main(["simulate", "--trace", str(workload), "--format", "sia", "--policy", policy,
                 "--out", str(solo), "--no-progress", *common]) == 0  # fmt: skip
    assert main(["experiment", "hetero", "--workloads", str(workload.parent), "--policies",
                 policy, "--out", str(sweep), *common]) == 0  # fmt: skip
    by_simulate = pq.read_table(solo / "jobs.parquet").to_pylist()
    with (sweep / "jobs.csv").open() as handle:
        by_experiment = [r for r in csv.DictReader(handle) if r["workload"].endswith(workload.stem)]
    with (sweep / "summary.csv").open() as handle:
        summary = next(csv.DictReader(handle))
    rows = {"simulate": _as_values(by_simulate), "experiment": _as_values(by_experiment)}
    summaries = {"simulate": json.loads((solo / "summary.json").read_text()), "hetero": summary}
    return rows, summaries


def main(argv: list[str]) -> int:
    """The simulator's commands as `gpufleet` parses them (without the controller's)."""
    parser = argparse.ArgumentParser(prog="gpufleet")
    add_simulator_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def _as_values(rows: list[dict]) -> list[dict[str, object]]:
    """Rows keyed by JOB_COLUMNS, numbers as floats (parquet keeps types, CSV text)."""
    return [{c: _value(r[c]) for c in JOB_COLUMNS} for r in rows]


def _value(value: object) -> object:
    if value is None or value == "":
        return None
    try:
        return float(str(value))
    except ValueError:
        return str(value)


@pytest.mark.parametrize("policy", ["gavel", "sia", "las"])
def test_simulate_and_experiment_run_the_same_semantics(tmp_path: Path, policy: str) -> None:
    """The same Sia workload, cluster, policy and seed give the same run through either
    command: Gavel and LAS run TunedJobs rigidly and Sia adapts them, and every launch,
    the first included, pays the checkpoint-restore delay (simulator.semantics)."""
    workloads = invented_data(tmp_path / "data")
    rows, summaries = simulate_and_experiment(tmp_path, workloads / "w-1.csv", policy)
    assert rows["simulate"] == rows["experiment"]
    solo, sweep = summaries["simulate"], summaries["hetero"]
    assert solo["completed"] == int(sweep["jobs"]) == 3
    assert round(solo["avg_jct_s"] / 3600, 4) == float(sweep["avg_jct_h"])
    starts = [r["start_s"] for r in rows["simulate"]]
    ends = [float(str(r["end_s"])) for r in rows["simulate"]]
    # toy-0 (2 GPUs, batch 32) starts at t=0 alone on an idle cluster: its first launch
    # pays the 30 s delay, so it cannot finish sooner than 30 s plus its work.
    assert starts[0] == 0.0 and ends[0] > 30.0
    if policy != "sia":
        assert [r["gpus"] for r in rows["simulate"]] == [2, 4, 1]  # TunedJobs, rigid


@pytest.mark.shared_data
def test_simulate_and_experiment_agree_on_a_public_workload(tmp_path: Path) -> None:
    workload = shared_data("sia/workloads/saturn/workload-1.csv")
    trimmed = tmp_path / "sia/workloads/saturn-40/workload-1.csv"
    lines = workload.read_text().splitlines()[:41]
    write(trimmed, "\n".join(lines))
    (tmp_path / "sia/traces").symlink_to(workload.parent.parent.parent / "traces")
    rows, summaries = simulate_and_experiment(tmp_path, trimmed, "gavel")
    assert rows["simulate"] == rows["experiment"]
    assert summaries["simulate"]["completed"] == 40
    assert round(summaries["simulate"]["p99_jct_s"], 0) > 0


def test_gavel_window_measures_jobs_of_a_continuous_trace(tmp_path: Path) -> None:
    """Gavel's measurement: single-GPU jobs keep arriving until jobs 7..9 (each at most
    3.1 h on a V100 in this invented table) have all completed; the run ends there and
    the summary covers those three jobs only."""
    table = {
        worker: {
            "('ResNet-18 (batch size 16)', 1)": {"null": speed},
            "('LM (batch size 5)', 1)": {"null": speed * 2},
            "('LM (batch size 5)', 2)": {"null": speed * 3},
        }
        for worker, speed in (("v100", 4.0), ("p100", 2.0), ("k80", 1.0))
    }
    throughputs = tmp_path / "throughputs.json"
    throughputs.write_text(json.dumps(table))
    namespace = args(
        tmp_path,
        tmp_path,
        gavel_traces=1,
        gavel_file=str(throughputs),
        gavel_rate=[2.0],
        gavel_window=hetero.parse_window("7-10"),
        cluster="gavel-108",
        policies="gavel,gavel-agnostic",
    )
    namespace.workloads = []
    assert hetero.run(namespace) == 0
    with (tmp_path / "out/summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    assert [(r["workload"], r["jobs"]) for r in summary] == [("gavel/rate-2/seed-0", "3")] * 2
    with (tmp_path / "out/jobs.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["policy"] == "gavel"]
    window = {f"gavel-{i}" for i in range(7, 10)}
    assert {r["job_id"] for r in rows if r["status"] == "completed"} >= window
    assert all(int(r["gpus"]) == 1 for r in rows)  # the continuous-single trace
    last = max(float(r["end_s"]) for r in rows if r["job_id"] in window)
    # The run stopped when the window's last job ended: nothing completed after it.
    assert all(float(r["end_s"]) <= last for r in rows if r["status"] == "completed")
    # Arrivals went on after job 9 (the trace is continuous, not 10 jobs long).
    assert any(int(r["job_id"].split("-")[1]) > 9 for r in rows)
    with pytest.raises(argparse.ArgumentTypeError, match="START-END"):
        hetero.parse_window("500")
