"""The RAP co-run model: stage packing (hand-worked), each mode's iteration time against
its formula, batch scaling, the calibration procedures, and packing invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.dlrm import (
    STAGES,
    DlrmProfile,
    DlrmWork,
    GpuStages,
    Mode,
    PreprocessingWork,
    batch_factor,
    mode_of,
)
from policies.jobs import AllocationShape, PartShape
from policies.rap_model import (
    CoRunCosts,
    CoRunModel,
    calibrate_cpu_factor,
    calibrate_dispatch_overhead,
    corun_overhead_for_gap,
)
from policies.rap_packing import Kernel, fused_kernels, pack_stages, stages_to_fill

# Intensities 0.5, 0.2, 0.3, 0.1, 1.0: fill order grad_comm, emb_fwd, mlp_bwd, mlp_fwd,
# emb_bwd. Total capacity 2.1 ms.
UNIT_STAGES = GpuStages((1.0, 1.0, 1.0, 1.0, 1.0), (0.5, 0.2, 0.3, 0.1, 1.0))
LAST = len(STAGES) - 1


def loads(plan) -> list[float]:
    return [round(plan.load_ms(s), 9) for s in range(len(STAGES))]


# -- packing, hand-worked --------------------------------------------------------------


def test_work_that_fits_goes_to_the_most_intense_stage() -> None:
    plan = pack_stages([Kernel(0.4, 4)], UNIT_STAGES)
    assert plan.chosen == (LAST,)
    assert loads(plan) == [0, 0, 0, 0, 0.4]
    assert plan.overflow_ms == 0


def test_a_kernel_that_does_not_fit_is_split_at_op_granularity() -> None:
    # 1.4 ms of work: grad_comm (1.0) is short, emb_fwd (0.5) completes the cover.
    # emb_fwd runs first: the 0.6 ms, 6-op kernel does not fit its 0.5 ms, so its first
    # 5 ops (0.5 ms) go there and the last op (0.1 ms) moves on to grad_comm, followed
    # by the 0.8 ms kernel: 0.9 ms of grad_comm's 1.0.
    plan = pack_stages([Kernel(0.6, 6), Kernel(0.8, 4)], UNIT_STAGES)
    assert plan.chosen == (LAST, 0)
    assert loads(plan) == [0.5, 0, 0, 0, 0.9]
    assert [k.ops for k in plan.stages[0]] == [5]
    assert [k.ops for k in plan.stages[LAST]] == [1, 4]
    assert plan.overflow_ms == 0


def test_work_beyond_all_capacity_overflows_into_the_last_stage() -> None:
    # 2.5 ms in one 25-op kernel against 2.1 ms of capacity: every stage takes as many
    # 0.1 ms ops as fit (5, 2, 3, 1, 10); the remaining 4 ops land in grad_comm too,
    # 0.4 ms beyond its capacity.
    plan = pack_stages([Kernel(2.5, 25)], UNIT_STAGES)
    assert sorted(plan.chosen) == [0, 1, 2, 3, 4]
    assert [sum(k.ops for k in s) for s in plan.stages] == [5, 2, 3, 1, 14]
    assert plan.overflow_ms == pytest.approx(0.4)


def test_unsplittable_kernels_block_in_order_and_overflow() -> None:
    # A 1-op kernel cannot be split: the 1.5 ms head fits no stage, and the 0.9 ms kernel
    # behind it waits too (the artifact's in-order walk), so both overflow grad_comm.
    plan = pack_stages([Kernel(1.5, 1), Kernel(0.9, 3)], UNIT_STAGES)
    assert loads(plan) == [0, 0, 0, 0, 2.4]
    assert plan.overflow_ms == pytest.approx(1.4)


def test_stage_choice_stops_once_capacity_covers_the_work() -> None:
    assert stages_to_fill(UNIT_STAGES, 0.0) == (LAST,)
    assert stages_to_fill(UNIT_STAGES, 1.5) == (LAST, 0)
    assert stages_to_fill(UNIT_STAGES, 1.8) == (LAST, 0, 2)
    assert stages_to_fill(UNIT_STAGES, 9.0) == (LAST, 0, 2, 1, 3)


def test_fused_kernels_share_latency_and_ops_evenly() -> None:
    kernels = fused_kernels(PreprocessingWork(37, 1.5, 0.7, 7))
    assert [k.ops for k in kernels] == [6, 6, 5, 5, 5, 5, 5]
    assert sum(k.latency_ms for k in kernels) == pytest.approx(0.7)


@given(
    st.lists(
        st.tuples(st.floats(0.0, 2.0), st.integers(1, 30)),
        min_size=0,
        max_size=12,
    ),
    st.lists(st.floats(0.0, 2.0), min_size=5, max_size=5),
)
def test_packing_conserves_work_and_only_the_last_stage_overruns(
    kernel_specs: list[tuple[float, int]], capacity: list[float]
) -> None:
    gpu = GpuStages((1.0,) * 5, tuple(capacity))
    kernels = [Kernel(latency, ops) for latency, ops in kernel_specs]
    plan = pack_stages(kernels, gpu)
    total = sum(k.latency_ms for k in kernels)
    assert sum(plan.load_ms(s) for s in range(5)) == pytest.approx(total, abs=1e-9)
    for stage in range(LAST):
        assert plan.load_ms(stage) <= capacity[stage] + 1e-9
    assert plan.overflow_ms == pytest.approx(max(0.0, plan.load_ms(LAST) - capacity[LAST]))
    assert plan.overflow_ms >= total - sum(capacity) - 1e-9


# -- iteration time per mode, against the formulas --------------------------------------

COSTS = CoRunCosts(
    corun_overhead=0.05,
    dispatch_overhead_ms=0.1,
    naive_interference=0.5,
    cpu_core_ms_per_kernel_ms=100.0,
    cpu_workers_per_gpu=4,
    host_slowdown=0.02,
)
STAGES_8MS = GpuStages((1.0, 2.0, 3.0, 1.0, 1.0), (0.5, 0.5, 1.0, 0.5, 2.0))
PROFILE = DlrmProfile(
    plan=0,
    batch=4096,
    stages=(STAGES_8MS, STAGES_8MS),
    work=(PreprocessingWork(30, 1.5, 0.5, 5), PreprocessingWork(28, 1.2, 0.4, 5)),
)
MODEL = CoRunModel(COSTS)


def test_ideal_is_the_training_time() -> None:
    assert MODEL.iteration_ms(PROFILE, Mode.IDEAL, None) == pytest.approx(8.0)


def test_sequential_adds_kernels_and_dispatch_of_the_slowest_gpu() -> None:
    # T + max(U + δ·n) = 8 + max(1.5 + 3.0, 1.2 + 2.8) = 12.5
    assert MODEL.iteration_ms(PROFILE, Mode.SEQUENTIAL, None) == pytest.approx(12.5)


def test_naive_corun_exposes_alpha_of_the_sequential_cost() -> None:
    # 8 + 0.5·4.5
    assert MODEL.iteration_ms(PROFILE, Mode.NAIVE, None) == pytest.approx(10.25)


def test_rap_pays_the_corun_overhead_when_the_work_fits() -> None:
    # (1 + ε)·T = 1.05·8; fused work (0.5 ms) fits grad_comm's 2.0 ms.
    assert MODEL.iteration_ms(PROFILE, Mode.RAP, None) == pytest.approx(8.4)


def test_rap_adds_the_overflow() -> None:
    tight = GpuStages((1.0, 2.0, 3.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0, 0.2))
    profile = DlrmProfile(0, 4096, (tight,), (PreprocessingWork(30, 1.5, 0.5, 5),))
    # 1.05·8 + (0.5 − 0.2)
    assert MODEL.iteration_ms(profile, Mode.RAP, None) == pytest.approx(8.7)


def test_rap_is_bounded_by_launching_its_kernels() -> None:
    slow_launch = CoRunModel(CoRunCosts(corun_overhead=0.05, dispatch_overhead_ms=2.0))
    # δ·k = 2.0·5 = 10 > 8.4
    assert slow_launch.iteration_ms(PROFILE, Mode.RAP, None) == pytest.approx(10.0)


def test_cpu_workers_keep_up_only_with_enough_cores() -> None:
    # 4 workers per GPU: max(8, ρ·U/4) = 100·1.5/4 = 37.5
    assert MODEL.iteration_ms(PROFILE, Mode.CPU, None) == pytest.approx(37.5)
    # 40 cores for the job, 20 per GPU: 100·1.5/20 = 7.5 < 8
    assert MODEL.iteration_ms(PROFILE, Mode.CPU, PartShape("preprocess", 40_000)) == 8.0


def test_remote_gpu_runs_all_fused_work_on_its_share() -> None:
    # ΣF = 0.9 ms; 100 milli: max(8, 9, δ·Σk = 1.0) = 9; 500 milli: 8
    assert MODEL.iteration_ms(
        PROFILE, Mode.REMOTE_GPU, PartShape("preprocess", 1000, 100)
    ) == pytest.approx(9.0)
    assert MODEL.iteration_ms(
        PROFILE, Mode.REMOTE_GPU, PartShape("preprocess", 1000, 500)
    ) == pytest.approx(8.0)
    assert MODEL.remote_milli_needed(PROFILE) == pytest.approx(112.5)
    assert MODEL.cpu_cores_needed(PROFILE) == pytest.approx(2 * 100 * 1.5 / 8)


def test_remote_and_cpu_modes_need_their_part() -> None:
    with pytest.raises(ValueError, match="remote-GPU preprocessing needs a part with milli-GPU"):
        MODEL.iteration_ms(PROFILE, Mode.REMOTE_GPU, None)
    with pytest.raises(ValueError, match="CPU preprocessing needs a part with CPU"):
        MODEL.iteration_ms(PROFILE, Mode.CPU, PartShape("preprocess", 0, 100))


def test_work_model_reads_the_mode_from_the_shape() -> None:
    work = DlrmWork(1000.0, PROFILE, MODEL, gpu_speed={"V100": 0.5})
    own = AllocationShape("A100", 2, 1, mode="sequential")
    assert work.rate(own, 0.0) == pytest.approx(1000.0 / 12.5)
    remote = AllocationShape("V100", 2, 1, parts=(PartShape("preprocess", 1000, 500),))
    assert work.rate(remote, 0.0) == pytest.approx(0.5 * 1000.0 / 8.0)
    assert work.rate(AllocationShape("A100", 2, 1), 0.0) == pytest.approx(1000.0 / 8.4)
    assert work.host_slowdown(PartShape("preprocess", 1000, 500)) == 0.02
    assert mode_of(AllocationShape("A100", 2, 1, parts=(PartShape("preprocess", 4000),))) == (
        Mode.CPU,
        PartShape("preprocess", 4000),
    )


def test_batch_scaling_is_relative_to_the_profile_batch() -> None:
    assert batch_factor(8192) == pytest.approx(0.92 * 2 + 0.33)
    scaled = PROFILE.at_batch(8192)
    factor = (0.92 * 2 + 0.33) / (0.92 + 0.33)
    assert scaled.work[0].fused_ms == pytest.approx(0.5 * factor)
    assert scaled.stages == PROFILE.stages
    assert PROFILE.at_batch(4096) == PROFILE


# -- calibration -----------------------------------------------------------------------


def single_gpu(train: float, unfused: float, ops: int) -> DlrmProfile:
    stages = GpuStages((train / 5,) * 5, (1.0,) * 5)
    return DlrmProfile(0, 4096, (stages,), (PreprocessingWork(ops, unfused, 0.1, 1),))


def test_corun_overhead_matches_the_gap_below_ideal() -> None:
    assert corun_overhead_for_gap(0.2) == pytest.approx(0.25)
    eps = corun_overhead_for_gap(0.0324)
    assert 1.0 / (1.0 + eps) == pytest.approx(1 - 0.0324)


def test_dispatch_overhead_is_the_median_of_per_profile_inversions() -> None:
    no_corun = CoRunCosts(corun_overhead=0.0)
    # RAP = T = 10; speedup 2 needs T + U + δ·n = 20: δ = (20 − 10 − 1)/10 = 0.9
    # second: (20 − 10 − 3)/14 = 0.5; third: (20 − 10 − 0)/5 = 2.0; median 0.9
    profiles = [single_gpu(10.0, 1.0, 10), single_gpu(10.0, 3.0, 14), single_gpu(10.0, 0.0, 5)]
    assert calibrate_dispatch_overhead(profiles, 2.0, no_corun) == pytest.approx(0.9)
    delta = calibrate_dispatch_overhead(profiles[:1], 2.0, no_corun)
    model = CoRunModel(CoRunCosts(corun_overhead=0.0, dispatch_overhead_ms=delta))
    seq = model.iteration_ms(profiles[0], Mode.SEQUENTIAL, None)
    assert seq / model.iteration_ms(profiles[0], Mode.RAP, None) == pytest.approx(2.0)


def test_cpu_factor_inverts_the_cpu_slowdown() -> None:
    # RAP = 10, U = 1, 2 workers: ρ = 10·10·2/1 = 200, giving CPU = 200·1/2 = 100 = 10·RAP
    profile = single_gpu(10.0, 1.0, 10)
    rho = calibrate_cpu_factor([profile], 10.0, 2, CoRunCosts(corun_overhead=0.0))
    assert rho == pytest.approx(200.0)


def test_costs_reject_impossible_values() -> None:
    for bad, message in (
        ({"naive_interference": 0.0}, r"naive_interference must be in \(0, 1\]"),
        ({"host_slowdown": 1.0}, "host_slowdown must be below 1"),
        ({"dispatch_overhead_ms": -1.0}, "overheads must be >= 0"),
        ({"cpu_workers_per_gpu": 0}, "the CPU factor and worker count must be positive"),
    ):
        with pytest.raises(ValueError, match=message):
            CoRunCosts(**bad)  # type: ignore[arg-type]


def test_profile_shapes_are_validated() -> None:
    with pytest.raises(ValueError, match=r"one value per stage \(5\)"):
        GpuStages((1.0,) * 4, (1.0,) * 4)
    with pytest.raises(ValueError, match="between 1 and num_ops fused kernels"):
        PreprocessingWork(3, 1.0, 1.0, 4)
    with pytest.raises(ValueError, match="needs stages and work for each of its GPUs"):
        DlrmProfile(0, 4096, (STAGES_8MS,), ())
    assert math.isclose(STAGES_8MS.intensity()[4], 2.0)
