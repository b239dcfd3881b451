"""Sia's allocation ILP: both exact solvers on hand-worked cases and against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.sia import Sia, SiaConfig, powered_utility
from policies.sia_ilp import Allocation, solve_allocation

SOLVERS = ["dp", "highs"]

# Hand-worked case: models A and B with 2 GPUs each; configurations A1, A2, B1, B2.
GOODPUT = np.array(
    [
        [1.0, 1.8, 3.0, 5.4],  # job 1 is much faster on B
        [1.0, 1.9, 1.2, 2.2],
        [1.0, 1.5, 1.05, 1.6],
    ]
)
CONFIG_GPUS = [1, 2, 1, 2]
CONFIG_MODEL = [0, 0, 1, 1]
NO_RIGID = np.zeros((0, 2))


def costs(goodput: np.ndarray) -> np.ndarray:
    return powered_utility(goodput, -0.5, 3000.0) - 1.1


@pytest.mark.parametrize("solver", SOLVERS)
def test_ilp_matches_the_hand_worked_optimum(solver: str) -> None:
    # U − λ: job1 [-.10 -.35 -.52 -.67], job2 [-.10 -.37 -.19 -.43],
    # job3 [-.10 -.28 -.12 -.31]. B2 for job 1 (−0.67) and A2 for job 2 (−0.37) beat every
    # other packing (e.g. job1 B1 + job3 B1 + job2 A2 = −1.01); job 3 waits.
    alloc = solve_allocation(
        costs(GOODPUT), CONFIG_GPUS, CONFIG_MODEL, NO_RIGID, [], [2, 2], solver=solver
    )
    assert alloc.adaptive == (3, 1, None)
    assert alloc.objective == pytest.approx(-1.04)


@pytest.mark.parametrize("solver", SOLVERS)
def test_ilp_respects_a_pinned_job(solver: str) -> None:
    # Job 3 mid-restart on A1 leaves one A GPU: job 2 takes A1, job 1 keeps B2.
    alloc = solve_allocation(
        costs(GOODPUT), CONFIG_GPUS, CONFIG_MODEL, NO_RIGID, [], [2, 2], {2: 0}, solver=solver
    )
    assert alloc.adaptive == (3, 0, 0)
    assert alloc.objective == pytest.approx(-0.87)


@pytest.mark.parametrize("solver", SOLVERS)
def test_rigid_jobs_share_capacity_with_adaptive_ones(solver: str) -> None:
    # A rigid 2-GPU job that much prefers B takes all of B.
    rigid = costs(np.array([[2.0, 8.0]]))
    alloc = solve_allocation(
        costs(GOODPUT), CONFIG_GPUS, CONFIG_MODEL, rigid, [2], [2, 2], solver=solver
    )
    assert alloc.rigid == (1,)
    used_b = sum(CONFIG_GPUS[c] for c in alloc.adaptive if c is not None and CONFIG_MODEL[c])
    assert used_b == 0


def test_the_dp_leaves_a_job_out_rather_than_spend_gpus_for_nothing() -> None:
    # Equal-cost choices: the job left out (cost 0 ties with a 0-cost choice), and the
    # earlier of two jobs that tie for the last GPU.
    alloc = solve_allocation(
        np.array([[0.0, -0.5], [-0.5, -0.5]]), [1, 1], [0, 1], NO_RIGID, [], [0, 1], solver="dp"
    )
    assert alloc.adaptive == (1, None)


@pytest.mark.parametrize("solver", SOLVERS)
def test_pins_that_do_not_fit_are_an_error(solver: str) -> None:
    with pytest.raises(ValueError, match="Sia ILP"):
        solve_allocation(
            costs(GOODPUT), CONFIG_GPUS, CONFIG_MODEL, NO_RIGID, [], [1, 2], {0: 1}, solver=solver
        )


def test_an_unknown_solver_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="'cbc'"):
        solve_allocation(
            costs(GOODPUT), CONFIG_GPUS, CONFIG_MODEL, NO_RIGID, [], [2, 2], solver="cbc"
        )
    with pytest.raises(ValueError, match="'cbc'"):
        Sia(SiaConfig(solver="cbc"))


@st.composite
def problems(draw: st.DrawFn) -> dict[str, object]:
    """Small ILPs of every shape the policy builds: several GPU models with configurations
    of assorted sizes, rigid jobs, tied costs (two decimals, as U is rounded), costs above
    zero (worse than waiting), capacities down to zero and pinned jobs."""
    n_models = draw(st.integers(1, 3))
    config_model = draw(st.lists(st.integers(0, n_models - 1), min_size=1, max_size=5))
    config_gpus = draw(
        st.lists(st.integers(1, 4), min_size=len(config_model), max_size=len(config_model))
    )
    n_adaptive = draw(st.integers(0, 4))
    n_rigid = draw(st.integers(0, 2))
    cost = st.integers(-150, 30).map(lambda c: c / 100)
    adaptive = np.array(
        draw(
            st.lists(
                cost,
                min_size=n_adaptive * len(config_model),
                max_size=n_adaptive * len(config_model),
            )
        )
    ).reshape(n_adaptive, len(config_model))
    rigid = np.array(
        draw(st.lists(cost, min_size=n_rigid * n_models, max_size=n_rigid * n_models))
    ).reshape(n_rigid, n_models)
    rigid_gpus = draw(st.lists(st.integers(1, 4), min_size=n_rigid, max_size=n_rigid))
    capacity = draw(st.lists(st.integers(0, 6), min_size=n_models, max_size=n_models))
    pins_a = draw(
        st.dictionaries(
            st.integers(0, max(n_adaptive - 1, 0)),
            st.integers(0, len(config_model) - 1),
            max_size=min(n_adaptive, 2),
        )
    )
    pins_r = draw(
        st.dictionaries(
            st.integers(0, max(n_rigid - 1, 0)),
            st.integers(0, n_models - 1),
            max_size=min(n_rigid, 1),
        )
    )
    return {
        "adaptive_cost": adaptive,
        "config_gpus": config_gpus,
        "config_model": config_model,
        "rigid_cost": rigid,
        "rigid_gpus": rigid_gpus,
        "capacity": capacity,
        "pinned_adaptive": pins_a,
        "pinned_rigid": pins_r,
    }


def brute_force(p: dict[str, object]) -> float | None:
    """Least objective over every assignment, or None when none is feasible."""
    adaptive, rigid = p["adaptive_cost"], p["rigid_cost"]
    assert isinstance(adaptive, np.ndarray) and isinstance(rigid, np.ndarray)
    options = [[None, *range(adaptive.shape[1])]] * adaptive.shape[0]
    options += [[None, *range(rigid.shape[1])]] * rigid.shape[0]
    best = None
    for choice in itertools.product(*options):
        if violates(p, choice[: adaptive.shape[0]], choice[adaptive.shape[0] :]):
            continue
        total = objective_of(p, choice[: adaptive.shape[0]], choice[adaptive.shape[0] :])
        best = total if best is None else min(best, total)
    return best


def violates(
    p: dict[str, object], adaptive: tuple[int | None, ...], rigid: tuple[int | None, ...]
) -> bool:
    """Capacity or a pin broken."""
    used = [0] * len(p["capacity"])  # type: ignore[arg-type]
    for c in adaptive:
        if c is not None:
            used[p["config_model"][c]] += p["config_gpus"][c]  # type: ignore[index]
    for i, t in enumerate(rigid):
        if t is not None:
            used[t] += p["rigid_gpus"][i]  # type: ignore[index]
    pins_a, pins_r = p["pinned_adaptive"], p["pinned_rigid"]
    assert isinstance(pins_a, dict) and isinstance(pins_r, dict)
    return (
        any(u > c for u, c in zip(used, p["capacity"], strict=True))  # type: ignore[call-overload]
        or any(adaptive[i] != j for i, j in pins_a.items())
        or any(rigid[i] != j for i, j in pins_r.items())
    )


def objective_of(
    p: dict[str, object], adaptive: tuple[int | None, ...], rigid: tuple[int | None, ...]
) -> float:
    a, r = p["adaptive_cost"], p["rigid_cost"]
    assert isinstance(a, np.ndarray) and isinstance(r, np.ndarray)
    return float(
        sum(a[i, c] for i, c in enumerate(adaptive) if c is not None)
        + sum(r[i, t] for i, t in enumerate(rigid) if t is not None)
    )


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from(SOLVERS))
def test_both_solvers_find_the_brute_force_optimum(p: dict[str, object], solver: str) -> None:
    """Pruned choices, the DP's trimmed state space and HiGHS's LP-first shortcut must
    all keep the optimum; what is returned must be feasible and cost what it says."""
    best = brute_force(p)
    if best is None:
        with pytest.raises(ValueError, match="Sia ILP"):
            solve_allocation(**p, solver=solver)  # type: ignore[arg-type]
        return
    alloc: Allocation = solve_allocation(**p, solver=solver)  # type: ignore[arg-type]
    assert not violates(p, alloc.adaptive, alloc.rigid)
    assert alloc.objective == pytest.approx(objective_of(p, alloc.adaptive, alloc.rigid), abs=1e-9)
    assert alloc.objective == pytest.approx(best, abs=1e-6)
