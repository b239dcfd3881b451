"""`gpufleet experiment hetero` end to end on a tiny invented workload and profile, plus
the Sia workload reader on good and bad input and (when present) the public data."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

from simulator.clusters import named_cluster
from simulator.experiments import hetero
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
