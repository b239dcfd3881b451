"""Pollux goodput model: formulas against hand-worked values, fitting, batch optimisation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.goodput import (
    GoodputFunction,
    GradParams,
    PerfParams,
    StepObservation,
    compute_time,
    efficiency,
    fit_perf_params,
    fit_perf_params_as_adaptdl,
    network_time,
    step_time,
    throughput,
)

NO_OVERLAP = PerfParams(
    alpha_c=0.1, beta_c=0.01, alpha_n=0.4, beta_n=0.1, alpha_r=0.2, beta_r=0.05, gamma=1.0
)


def synthetic_observations(true: PerfParams) -> list[StepObservation]:
    rows = []
    for nodes, replicas in [(1, 1), (1, 2), (1, 3), (1, 4), (2, 8), (3, 12), (4, 16)]:
        for atomic in (16, 32, 64, 128):
            comp = compute_time(true, atomic)
            step = step_time(true, comp, network_time(true, nodes, replicas))
            rows.append(StepObservation(nodes, replicas, atomic, float(step), float(step - comp)))
    return rows


def test_throughput_matches_hand_computation() -> None:
    # K=4 on one node, atomic 10, one accumulation step, γ=1 (no overlap):
    # comp = 0.1 + 0.01·10 = 0.2; net = 0.2 + 0.05·(4−2) = 0.3; step = 0.5;
    # iteration = 1·0.2 + 0.5 = 0.7 s for 4·10·2 = 80 samples.
    assert throughput(NO_OVERLAP, 1, 4, 10, 1) == pytest.approx(80 / 0.7)
    # Two nodes use the inter-node terms: net = 0.4 + 0.1·6 = 1.0, step = 1.2.
    assert throughput(NO_OVERLAP, 2, 8, 10, 0) == pytest.approx(80 / 1.2)
    # One replica has (almost) no network time.
    assert throughput(NO_OVERLAP, 1, 1, 10, 0) == pytest.approx(10 / 0.2, rel=1e-6)


def test_large_gamma_overlaps_compute_and_network() -> None:
    overlapped = PerfParams(0.1, 0.01, 0.4, 0.1, 0.2, 0.05, 10.0)
    comp, net = np.array([0.2]), np.array([0.3])
    assert step_time(overlapped, comp, net)[0] == pytest.approx(0.3, rel=0.01)
    assert step_time(NO_OVERLAP, comp, net)[0] == pytest.approx(0.5)


def test_efficiency_matches_hand_computation() -> None:
    # sqr = 1, var = 3, M0 = 32: φ = 32·3/1 = 96, so EFF(128) = (96+32)/(96+128) = 4/7.
    grad = GradParams(sqr=1.0, var=3.0)
    assert efficiency(grad, 32, 128) == pytest.approx(4 / 7)
    assert efficiency(grad, 32, 32) == pytest.approx(1.0)


@given(
    sqr=st.floats(1e-3, 1e3),
    var=st.floats(1e-3, 1e3),
    scale=st.floats(1.0, 512.0),
)
def test_efficiency_is_the_noise_scale_form(sqr: float, var: float, scale: float) -> None:
    phi = 32 * var / sqr
    expected = (phi + 32) / (phi + 32 * scale)
    assert efficiency(GradParams(sqr, var), 32, 32 * scale) == pytest.approx(expected)


def test_goodput_is_throughput_times_efficiency() -> None:
    fn = GoodputFunction(NO_OVERLAP, GradParams(1.0, 3.0), init_batch_size=32)
    # 80 samples per 0.7 s at efficiency (96+32)/(96+80) = 128/176.
    assert fn.evaluate(1, 4, 10, 1) == pytest.approx(80 / 0.7 * 128 / 176)


def test_optimize_finds_the_best_batch_on_its_grid() -> None:
    fn = GoodputFunction(NO_OVERLAP, GradParams(1.0, 3.0), init_batch_size=32)
    best = fn.best_batch(1, 4, max_batch_size=4096, atomic_bsz_range=(8, 64))
    grid = np.geomspace(32, 4096, 400)
    candidates = []
    for batch in grid:
        local = batch / 4
        accum = math.ceil(local / 64 - 1e-8) - 1
        atomic = math.ceil(local / (accum + 1) - 1e-8)
        if 8 <= atomic <= 64:
            candidates.append(float(fn.evaluate(1, 4, atomic, accum)))
    assert 8 <= best.atomic_bsz <= 64
    assert best.goodput == pytest.approx(max(candidates), rel=0.02)
    at_choice = fn.evaluate(1, 4, best.atomic_bsz, best.accum_steps)
    assert best.goodput == pytest.approx(float(at_choice))


def test_optimize_without_tuning_keeps_the_batch() -> None:
    fn = GoodputFunction(NO_OVERLAP, GradParams(1.0, 3.0), init_batch_size=32)
    choice = fn.best_batch(1, 4, max_batch_size=512, atomic_bsz_range=(8, 64), tune_batch=False)
    # 512 over 4 replicas is 128 per replica: two micro-batches of 64.
    assert (choice.atomic_bsz, choice.accum_steps) == (64, 1)
    assert choice.per_replica * 4 == 512


def test_optimize_answers_for_its_own_model_on_a_shared_grid() -> None:
    # Both models try the same (memoised) batch grid; each answer is its own, and the
    # caller may change the arrays it gets without touching later answers.
    args = ([1, 2], [4, 16], 4096, (8, 64))
    fast = GoodputFunction(NO_OVERLAP, GradParams(1.0, 3.0), init_batch_size=32)
    slow_network = dataclasses.replace(NO_OVERLAP, alpha_n=40.0, beta_n=10.0)
    slow = GoodputFunction(slow_network, GradParams(1.0, 3.0), init_batch_size=32)
    expected = [a.copy() for a in fast.optimize(*args)]
    answer = slow.optimize(*args)
    assert answer[0][1] < expected[0][1]  # 2 nodes over a slow network
    for array in answer:
        array[...] = -1
    assert all(np.array_equal(a, e) for a, e in zip(fast.optimize(*args), expected, strict=True))


def test_one_replica_accumulates_above_the_initial_batch() -> None:
    fn = GoodputFunction(NO_OVERLAP, GradParams(1.0, 0.0), init_batch_size=32)
    choice = fn.best_batch(1, 1, max_batch_size=64, atomic_bsz_range=(8, 64), tune_batch=False)
    assert (choice.atomic_bsz, choice.accum_steps) == (32, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_synthetic_parameters(seed: int) -> None:
    rng = np.random.default_rng(seed)
    low, high = [0.01, 5e-4, 0.1, 0.02, 1.0], [0.1, 5e-3, 0.5, 0.2, 1.3]
    a_c, b_c, a_n, a_r, gamma = rng.uniform(low, high)
    true = PerfParams(a_c, b_c, a_n, 0.03 * a_n, a_r, 0.03 * a_r, gamma)
    fitted = fit_perf_params(synthetic_observations(true))
    np.testing.assert_allclose(fitted.as_array(), true.as_array(), rtol=0.02)


def test_warm_refit_stays_at_the_optimum() -> None:
    true = PerfParams(0.05, 0.002, 0.3, 0.009, 0.1, 0.003, 1.1)
    observations = synthetic_observations(true)
    first = fit_perf_params(observations)
    refit = fit_perf_params(observations, start=first)
    np.testing.assert_allclose(refit.as_array(), true.as_array(), rtol=0.02)


# ImageNet on one DGX-A100 node as a job of the Sia artifact observed it: (nodes, GPUs,
# per-GPU batch) and the profile's step and sync time there, in the order the job ran them
# when alone on sia-64. After each one the job refitted; `ADAPTDL_FITS[n]` is the model the
# artifact's job held after the first n (its PerfParams printed at full precision).
IMAGENET_A100 = [
    StepObservation(1, 2, 100, 0.17552719878799775, 0.011969974484732923),
    StepObservation(1, 2, 215, 0.31279776990413666, 0.05941222699446713),
    StepObservation(1, 2, 167, 0.24469594657421112, 0.02881646322437069),
    StepObservation(1, 2, 182, 0.26597776636481285, 0.03837763940252583),
    StepObservation(1, 2, 198, 0.2886783741414547, 0.048576227325891314),
    StepObservation(1, 4, 139, 0.21930959820747375, 0.020062304325401785),
]
ADAPTDL_FITS = {
    1: PerfParams(
        0.08177861215163242, 0.0009003532474280606, 0.01089065504309724,
        1.1000000000000001e-08, 0.009900595493724762, 1e-08, 1.2613098417668942,
    ),
    3: PerfParams(
        0.03958047957278571, 0.001085804139634752, 0.04353427180580237,
        1.1000000000000001e-08, 0.039576610732547604, 1e-08, 1.1140388758932966,
    ),
    6: PerfParams(
        0.03844318754486147, 0.0010845616583964165, 0.04232900183318402,
        0.004270011683016912, 0.038480910757440014, 0.0038818288027426466, 1.0955279920004684,
    ),
}  # fmt: skip


@pytest.mark.parametrize("count", sorted(ADAPTDL_FITS))
def test_adaptdl_fit_gives_the_artifacts_models(count: int) -> None:
    fitted = fit_perf_params_as_adaptdl(IMAGENET_A100[:count])
    np.testing.assert_allclose(fitted.as_array(), ADAPTDL_FITS[count].as_array(), rtol=1e-4)


def test_adaptdl_fit_stops_short_of_the_minimum() -> None:
    # One observation pins α_c to half its compute time (0.1636 s), leaving β_c and the
    # intra-node terms free: the exact fit reproduces the observation, AdaptDL's stops
    # with the compute time 5% high (0.0818 + 100 · 0.0009 = 0.1718 s).
    seen = IMAGENET_A100[0]
    exact = fit_perf_params([seen])
    adaptdl = fit_perf_params_as_adaptdl([seen])
    assert compute_time(exact, 100) == pytest.approx(seen.compute_time, rel=1e-3)
    assert compute_time(adaptdl, 100) / seen.compute_time == pytest.approx(1.05, abs=0.005)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from([8, 16, 32, 64]), min_size=1, max_size=6))
def test_single_node_fit_respects_the_network_prior(batches: list[int]) -> None:
    true = PerfParams(0.05, 0.002, 0.3, 0.009, 0.1, 0.003, 1.1)
    observations = [
        StepObservation(1, k, m, float(t), float(t - c))
        for k, m in zip([1, 2, 4, 2, 4, 1], batches, strict=False)
        for c in [compute_time(true, m)]
        for t in [step_time(true, c, network_time(true, 1, k))]
    ]
    fitted = fit_perf_params(observations)
    assert fitted.alpha_n >= 1.1 * fitted.alpha_r - 1e-12
    assert fitted.beta_n >= 1.1 * fitted.beta_r - 1e-12
    if len(set(batches)) == 1:
        expected = np.mean([o.compute_time for o in observations]) / 2
        assert fitted.alpha_c == pytest.approx(expected)
