"""`gpufleet experiment rap` end to end on invented profile rows (seconds)."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gpufleet.cli import main
from policies.dlrm import STAGES

STAGE_HEADER = "plan,num_gpus,gpu,stage,stage_ms,capacity_ms\n"
WORK_HEADER = "plan,num_gpus,batch,gpu,num_ops,unfused_ms,fused_ms,method\n"


def invented_data(root: Path) -> Path:
    """Plan 0 with op data at 2 GPUs (both batches), plan 2 with stages only."""
    stages = "".join(
        f"{plan},2,{g},{s},{1.0 + plan},{0.6}\n"
        for plan in (0, 2)
        for g in range(2)
        for s in STAGES
    )
    work = "".join(
        f"0,2,{batch},{g},{ops},{1.5 * batch / 4096},{0.3 * batch / 4096},layer_approx\n"
        for batch in (4096, 8192)
        for g, ops in ((0, 67), (1, 65))
    )
    (root / "stage_capacity.csv").write_text(STAGE_HEADER + stages)
    (root / "preprocessing_work.csv").write_text(WORK_HEADER + work)
    return root


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_experiment_writes_every_table_and_plot(tmp_path: Path) -> None:
    data = invented_data(tmp_path)
    out = tmp_path / "out"
    argv = ["experiment", "rap", "--out", str(out), "--data", str(data), "--jobs", "25"]
    code = main([*argv, "--seeds", "1", "--rates", "2", "--host-slowdowns", "0.05"])
    assert code == 0
    single = read(out / "single_job.csv")
    assert list(single[0]) == [
        "plan",
        "num_gpus",
        "mode",
        "iteration_ms",
        "throughput_ratio_vs_ideal",
    ]
    assert {(r["plan"], r["num_gpus"]) for r in single} == {("0", "2"), ("2", "2")}
    ideal = [r for r in single if r["mode"] == "ideal"]
    assert all(float(r["throughput_ratio_vs_ideal"]) == 1.0 for r in ideal)
    assert all(float(r["throughput_ratio_vs_ideal"]) <= 1.0 for r in single)
    fidelity = read(out / "fidelity.csv")
    assert {(r["plan"], r["batch"], r["extrapolated"]) for r in fidelity} == {
        ("0", "4096", "False"),
        ("0", "8192", "False"),
        ("2", "4096", "True"),
        ("2", "8192", "True"),
    }
    cluster = read(out / "cluster.csv")
    assert {r["policy"] for r in cluster} == {
        "no_sharing",
        "rap_own",
        "cross_job",
        "cross_job_always",
        "cross_job_no_rap",
    }
    assert all(int(float(r["completed"])) == 25 for r in cluster)
    for name in ("single_job.png", "sensitivity.png", "cluster.png", "mixed_trace.csv"):
        assert (out / name).stat().st_size > 0


def test_the_written_trace_replays_through_simulate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rap").mkdir()
    invented_data(tmp_path / "rap")
    monkeypatch.setenv("GPUFLEET_DATA_DIR", str(tmp_path))
    out = tmp_path / "out"
    args = ["--jobs", "12", "--seeds", "1", "--rates", "2"]
    assert main(["experiment", "rap", "--out", str(out), *args]) == 0
    cluster = tmp_path / "nodes.csv"
    cluster.write_text(
        "name,cpu_milli,mem_mib,gpus,gpu_model,rack\n"
        + "".join(f"a{i},96000,786432,8,A100,r0\n" for i in range(2))
    )
    run = tmp_path / "run"
    command = ["simulate", "--trace", str(out / "mixed_trace.csv"), "--format", "dlrm"]
    command += ["--policy", "rap", "--cluster", str(cluster), "--out", str(run), "--no-progress"]
    assert main(command) == 0
    jobs = pq.read_table(run / "jobs.parquet").to_pylist()
    dlrm = [j for j in jobs if j["kind"] == "dlrm"]
    assert dlrm and all(j["status"] == "completed" for j in jobs)


@pytest.mark.parametrize(
    "bad", [["--rates", "0"], ["--host-slowdowns", "1.5"], ["--jobs", "0"], ["--rates", "x"]]
)
def test_bad_arguments_fail_without_output(
    tmp_path: Path, bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    data = invented_data(tmp_path)
    assert main(["experiment", "rap", "--out", str(out), "--data", str(data), *bad]) == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()
