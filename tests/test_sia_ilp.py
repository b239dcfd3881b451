"""Sia's allocation ILP: both exact solvers on hand-worked cases and against brute force."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

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


Choice = tuple[int | None, ...]


@dataclass(frozen=True)
class Problem:
    """One ILP in `solve_allocation`'s terms."""

    adaptive_cost: np.ndarray
    config_gpus: list[int]
    config_model: list[int]
    rigid_cost: np.ndarray
    rigid_gpus: list[int]
    capacity: list[int]
    pinned_adaptive: dict[int, int]
    pinned_rigid: dict[int, int]

    def solve(self, solver: str) -> Allocation:
        return solve_allocation(**vars(self), solver=solver)

    def violates(self, adaptive: Choice, rigid: Choice) -> bool:
        """Capacity or a pin broken."""
        used = [0] * len(self.capacity)
        for c in adaptive:
            if c is not None:
                used[self.config_model[c]] += self.config_gpus[c]
        for i, t in enumerate(rigid):
            if t is not None:
                used[t] += self.rigid_gpus[i]
        return (
            any(u > c for u, c in zip(used, self.capacity, strict=True))
            or any(adaptive[i] != j for i, j in self.pinned_adaptive.items())
            or any(rigid[i] != j for i, j in self.pinned_rigid.items())
        )

    def objective_of(self, adaptive: Choice, rigid: Choice) -> float:
        return float(
            sum(self.adaptive_cost[i, c] for i, c in enumerate(adaptive) if c is not None)
            + sum(self.rigid_cost[i, t] for i, t in enumerate(rigid) if t is not None)
        )

    def brute_force(self) -> float | None:
        """Least objective over every assignment, or None when none is feasible."""
        n_adaptive, n_configs = self.adaptive_cost.shape
        n_rigid, n_models = self.rigid_cost.shape
        options = [[None, *range(n_configs)]] * n_adaptive + [[None, *range(n_models)]] * n_rigid
        best = None
        for choice in itertools.product(*options):
            adaptive, rigid = choice[:n_adaptive], choice[n_adaptive:]
            if not self.violates(adaptive, rigid):
                total = self.objective_of(adaptive, rigid)
                best = total if best is None else min(best, total)
        return best


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    """Small ILPs of every shape the policy builds: several GPU models with configurations
    of assorted sizes, rigid jobs, tied costs (two decimals, as U is rounded), costs above
    zero (worse than waiting), capacities down to zero and pinned jobs."""
    n_models = draw(st.integers(1, 3))
    config_model = draw(st.lists(st.integers(0, n_models - 1), min_size=1, max_size=5))
    n_configs = len(config_model)
    config_gpus = draw(st.lists(st.integers(1, 4), min_size=n_configs, max_size=n_configs))
    n_adaptive = draw(st.integers(0, 4))
    n_rigid = draw(st.integers(0, 2))

    def costs(rows: int, cols: int) -> np.ndarray:
        values = st.integers(-150, 30).map(lambda c: c / 100)
        return np.array(draw(st.lists(values, min_size=rows * cols, max_size=rows * cols)))

    def pins(jobs: int, choices: int, most: int) -> dict[int, int]:
        keys, values = st.integers(0, max(jobs - 1, 0)), st.integers(0, choices - 1)
        return draw(st.dictionaries(keys, values, max_size=min(jobs, most)))

    return Problem(
        adaptive_cost=costs(n_adaptive, n_configs).reshape(n_adaptive, n_configs),
        config_gpus=config_gpus,
        config_model=config_model,
        rigid_cost=costs(n_rigid, n_models).reshape(n_rigid, n_models),
        rigid_gpus=draw(st.lists(st.integers(1, 4), min_size=n_rigid, max_size=n_rigid)),
        capacity=draw(st.lists(st.integers(0, 6), min_size=n_models, max_size=n_models)),
        pinned_adaptive=pins(n_adaptive, n_configs, 2),
        pinned_rigid=pins(n_rigid, n_models, 1),
    )


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from(SOLVERS))
def test_both_solvers_find_the_brute_force_optimum(problem: Problem, solver: str) -> None:
    """Pruned choices, the DP's trimmed state space and HiGHS's LP-first shortcut must
    all keep the optimum; what is returned must be feasible and cost what it says."""
    best = problem.brute_force()
    if best is None:
        with pytest.raises(ValueError, match="Sia ILP"):
            problem.solve(solver)
        return
    alloc = problem.solve(solver)
    assert not problem.violates(alloc.adaptive, alloc.rigid)
    assert alloc.objective == pytest.approx(problem.objective_of(alloc.adaptive, alloc.rigid))
    assert alloc.objective == pytest.approx(best, abs=1e-6)
