"""RAP profile loading (invented rows), DLRM traces, and, on the public data, that the
documented calibration follows from its procedure and meets the paper's averages."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from policies import ModelThroughput
from policies.dlrm import STAGES, DlrmWork, Mode
from policies.rap_model import (
    CoRunCosts,
    CoRunModel,
    calibrate_cpu_factor,
    calibrate_dispatch_overhead,
    corun_overhead_for_gap,
)
from tests.conftest import shared_data
from traces import TraceError, load_jobs
from traces.rap import (
    MixedTraceSpec,
    fused_kernel_count,
    generate_mixed_jobs,
    load_profiles,
    write_jobs,
)

STAGE_HEADER = "plan,num_gpus,gpu,stage,stage_ms,capacity_ms\n"
WORK_HEADER = "plan,num_gpus,batch,gpu,num_ops,unfused_ms,fused_ms,method\n"


def stage_rows(plan: int, gpus: int, stage_ms: float = 2.0) -> str:
    return "".join(
        f"{plan},{gpus},{g},{s},{stage_ms},{0.5 + g}\n" for g in range(gpus) for s in STAGES
    )


def write_data(tmp_path: Path, stages: str, work: str) -> Path:
    (tmp_path / "stage_capacity.csv").write_text(STAGE_HEADER + stages)
    (tmp_path / "preprocessing_work.csv").write_text(WORK_HEADER + work)
    return tmp_path


WORK_ROWS = "0,2,4096,0,67,1.8,0.4,layer_approx\n0,2,4096,1,65,1.7,0.3,layer_approx\n"


def test_profiles_combine_stages_and_work(tmp_path: Path) -> None:
    profiles = load_profiles(write_data(tmp_path, stage_rows(0, 2), WORK_ROWS))
    profile = profiles[(0, 2, 4096)]
    assert profile.train_ms == pytest.approx(10.0)
    assert profile.stages[1].capacity_total_ms == pytest.approx(7.5)
    assert [w.fused_kernels for w in profile.work] == [7, 5]
    assert not profile.extrapolated


def test_plans_without_op_data_replicate_plan_zero(tmp_path: Path) -> None:
    data = write_data(tmp_path, stage_rows(0, 2) + stage_rows(3, 2, 6.0), WORK_ROWS)
    plan3 = load_profiles(data)[(3, 2, 4096)]
    assert plan3.extrapolated and plan3.train_ms == pytest.approx(30.0)
    assert plan3.work[0].num_ops == 4 * 67 and plan3.work[0].fused_kernels == 28
    assert plan3.work[1].unfused_ms == pytest.approx(4 * 1.7)


@pytest.mark.parametrize(
    ("stages", "work", "message"),
    [
        (stage_rows(0, 2).replace("grad_comm", "loss"), WORK_ROWS, "unknown stage"),
        (stage_rows(0, 2)[: -len("0,2,1,grad_comm,2.0,1.5\n")], WORK_ROWS, "needs all stages"),
        (stage_rows(0, 2), WORK_ROWS.replace("4096,1,", "4096,2,"), "out of range"),
        (stage_rows(0, 2), WORK_ROWS.replace(",65,", ",63,"), "op structure"),
        (stage_rows(0, 2), WORK_ROWS.splitlines()[0] + "\n", "GPUs missing"),
    ],
)
def test_bad_profile_files_fail_with_one_line(
    tmp_path: Path, stages: str, work: str, message: str
) -> None:
    with pytest.raises(TraceError, match=message):
        load_profiles(write_data(tmp_path, stages, work))


def test_kernel_count_follows_the_plan_structure() -> None:
    assert [fused_kernel_count(n) for n in (67, 65, 46, 47, 44, 37, 38, 35)] == [
        7,
        5,
        7,
        5,
        5,
        7,
        5,
        5,
    ]
    with pytest.raises(ValueError, match="27 ops do not match the plan 0/1 op structure"):
        fused_kernel_count(27)


def test_mixed_trace_round_trips_through_the_dlrm_format(tmp_path: Path) -> None:
    data = write_data(tmp_path, stage_rows(0, 2), WORK_ROWS)
    profiles = load_profiles(data)
    spec = MixedTraceSpec(num_jobs=40, dlrm_fraction=0.5, plans=(0,), batches=(4096,))
    jobs = generate_mixed_jobs(spec, profiles, seed=3)
    dlrm = [j for j in jobs if j.kind == "dlrm"]
    assert dlrm and len(dlrm) < len(jobs)
    assert [j.submit_time for j in jobs] == sorted(j.submit_time for j in jobs)
    path = tmp_path / "mix.csv"
    write_jobs(jobs, path)
    loaded = {j.id: j for j in load_jobs(path, "dlrm", data_dir=data)}
    for job in dlrm:
        work = loaded[job.id].work
        assert isinstance(work, DlrmWork)
        assert work.iterations == job.work.total and work.profile == job.work.profile
    plain = {j.id: j for j in load_jobs(path, "canonical")}
    ideal = plain[dlrm[0].id].work
    assert isinstance(ideal, ModelThroughput)
    assert ideal.throughput["A100"] == pytest.approx(1000.0 / 10.0, rel=1e-6)


def test_dlrm_rows_must_name_a_known_profile(tmp_path: Path) -> None:
    data = write_data(tmp_path, stage_rows(0, 2), WORK_ROWS)
    trace = tmp_path / "t.csv"
    trace.write_text(
        "id,submit_s,kind,num_gpus,work,throughput,dlrm_plan,dlrm_batch\n"
        "a,0,dlrm,2,100,A100=1,1,4096\n"
    )
    with pytest.raises(TraceError, match="no RAP profile"):
        load_jobs(trace, "dlrm", data_dir=data)


# -- the public data ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured() -> list:
    directory = shared_data("rap/stage_capacity.csv").parent
    return [p for p in load_profiles(directory).values() if not p.extrapolated]


def test_public_data_covers_plans_zero_and_one(measured: list) -> None:
    keys = {(p.plan, p.num_gpus, p.batch) for p in measured}
    assert keys == {(p, g, b) for p in (0, 1) for g in (2, 4, 8) for b in (4096, 8192)}


def test_documented_defaults_follow_from_the_calibration_procedure(measured: list) -> None:
    costs = CoRunCosts()
    assert costs.corun_overhead == round(corun_overhead_for_gap(), 4)
    assert costs.dispatch_overhead_ms == round(calibrate_dispatch_overhead(measured), 3)
    assert costs.cpu_core_ms_per_kernel_ms == round(calibrate_cpu_factor(measured), -1)


def test_calibrated_model_meets_the_paper_averages(measured: list) -> None:
    model = CoRunModel()
    speedups, gaps = [], []
    for profile in measured:
        rap = model.iteration_ms(profile, Mode.RAP, None)
        speedups.append(model.iteration_ms(profile, Mode.SEQUENTIAL, None) / rap)
        gaps.append(1.0 - model.iteration_ms(profile, Mode.IDEAL, None) / rap)
    assert 1.9 <= statistics.mean(speedups) <= 2.1
    assert max(gaps) < 0.05
    naive = [model.iteration_ms(p, Mode.NAIVE, None) for p in measured]
    seq = [model.iteration_ms(p, Mode.SEQUENTIAL, None) for p in measured]
    rap_ms = [model.iteration_ms(p, Mode.RAP, None) for p in measured]
    assert all(r < n < s for r, n, s in zip(rap_ms, naive, seq, strict=True))
