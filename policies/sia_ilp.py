"""Sia's allocation ILP and its two exact solvers.

Each job takes at most one choice (a configuration, or a GPU model for a rigid job); the
GPUs chosen on each model fit its capacity; jobs mid-restart are pinned to their choice.
The objective is a sum of per-choice costs (U − λ), minimised.

Every choice uses GPUs of one model only, so a solution is fixed by the jobs' choices and
the problem's state is the GPUs used per model. On a small cluster (Sia's 64 GPUs: at most
17 × 25 × 25 usage states) an exact dynamic program over that state is about four times
faster than HiGHS, which spends milliseconds setting up even a MIP it solves at the root.
Its work grows with the product of the capacities, so larger clusters go to HiGHS
(`scipy.optimize.milp`), the LP relaxation first. Both return an optimum; where several
exist they may pick different ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.optimize
import scipy.sparse

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SOLVERS = ("auto", "dp", "highs")
DP_MAX_UPDATES = 4_000_000
"""The dynamic program's work is (choices × usage states) updates at about 0.9 ns each.
Replaying the rounds of a 64-GPU newtrace run at 1-3× its capacities, it beats HiGHS
3-4× below four million updates (≈ 4 ms), wins or loses by instance up to about twelve
million, and loses beyond; `auto` switches at four."""


def check_solver(name: str) -> None:
    if name not in SOLVERS:
        raise ValueError(f"unknown Sia ILP solver {name!r}; one of {', '.join(SOLVERS)}")


@dataclass(frozen=True)
class Allocation:
    """The ILP's answer: per job, a configuration index (or a GPU model for rigid jobs),
    or None when the job gets nothing this round."""

    adaptive: tuple[int | None, ...]
    rigid: tuple[int | None, ...]
    objective: float


def solve_allocation(
    adaptive_cost: FloatArray,
    config_gpus: Sequence[int],
    config_model: Sequence[int],
    rigid_cost: FloatArray,
    rigid_gpus: Sequence[int],
    capacity: Sequence[int],
    pinned_adaptive: Mapping[int, int] | None = None,
    pinned_rigid: Mapping[int, int] | None = None,
    minimise: bool = True,
    rel_gap: float = 1e-4,
    solver: str = "auto",
) -> Allocation:
    """Sia's ILP. `adaptive_cost[i, j]` is the objective coefficient of giving job i
    configuration j (U − λ); `rigid_cost[i, t]` of running rigid job i on model t. At most
    one choice per job; per model, the GPUs chosen fit `capacity`; pins force a choice.
    `solver`: `dp`, `highs`, or `auto` (the dynamic program when its work is at most
    `DP_MAX_UPDATES`); `rel_gap` is HiGHS's optimality gap (the DP is exact).

    Choices that no optimum needs are left out before solving (see `_useful_choices`),
    which roughly halves the problem without changing its optimum."""
    check_solver(solver)
    n_adaptive, n_configs = adaptive_cost.shape if adaptive_cost.size else (0, len(config_gpus))
    n_rigid, n_models = rigid_cost.shape if rigid_cost.size else (0, len(capacity))
    adaptive_cost = adaptive_cost.reshape(n_adaptive, n_configs)
    rigid_cost = rigid_cost.reshape(n_rigid, n_models)
    sign = 1.0 if minimise else -1.0
    problem = _Choices.join(
        _Choices.of(
            sign * adaptive_cost,
            np.broadcast_to(np.asarray(config_gpus, dtype=np.int64), adaptive_cost.shape),
            np.asarray(config_model, dtype=np.int64),
            pinned_adaptive or {},
        ),
        _Choices.of(
            sign * rigid_cost,
            np.broadcast_to(np.asarray(rigid_gpus, dtype=np.int64)[:, None], rigid_cost.shape),
            np.arange(n_models, dtype=np.int64),
            pinned_rigid or {},
            first_job=n_adaptive,
        ),
    )
    n_jobs = n_adaptive + n_rigid
    chosen = _solve(problem, n_jobs, np.asarray(capacity, dtype=np.int64), rel_gap, solver)
    picked: list[int | None] = [None] * n_jobs
    for var in np.flatnonzero(chosen):
        picked[int(problem.job[var])] = int(problem.column[var])
    return Allocation(
        adaptive=tuple(picked[:n_adaptive]),
        rigid=tuple(picked[n_adaptive:]),
        objective=float(sign * problem.cost[chosen].sum()),
    )


@dataclass(frozen=True)
class _Choices:
    """The ILP's variables: per variable its job, the column of the cost matrix it stands
    for, cost, GPUs, GPU model and whether it is pinned."""

    job: IntArray
    column: IntArray
    cost: FloatArray
    gpus: IntArray
    model: IntArray
    pinned: npt.NDArray[np.bool_]

    @staticmethod
    def of(
        cost: FloatArray,
        gpus: IntArray,
        model: IntArray,
        pins: Mapping[int, int],
        first_job: int = 0,
    ) -> _Choices:
        """The useful choices of one block of jobs. `gpus[i, j]`: GPUs of choice j for
        job i; `model[j]`: the GPU model of column j; job i is ILP row `first_job + i`."""
        pinned = np.zeros(cost.shape, dtype=bool)
        for i, j in pins.items():
            pinned[i, j] = True
        keep = _useful_choices(cost, gpus, model) | pinned
        job, column = np.nonzero(keep)
        return _Choices(
            first_job + job, column, cost[keep], gpus[keep], model[column], pinned[keep]
        )

    @staticmethod
    def join(*blocks: _Choices) -> _Choices:
        return _Choices(
            *(np.concatenate([getattr(b, name) for b in blocks]) for name in _CHOICE_FIELDS)
        )

    @property
    def size(self) -> int:
        return int(self.job.size)


_CHOICE_FIELDS = ("job", "column", "cost", "gpus", "model", "pinned")


def _useful_choices(cost: FloatArray, gpus: IntArray, model: IntArray) -> npt.NDArray[np.bool_]:
    """Which (job, choice) entries some optimum may use, for a minimisation. Dropped:
    a choice that costs more than leaving the job out (cost > 0), and a choice that
    costs more than one of the same job on the same GPU model with no more GPUs, since
    swapping to that one frees GPUs and lowers the objective. Ties are kept, so every
    optimum of the full ILP remains. The GPUs of a column must be the same for every
    job (adaptive configurations) or the model's only column (rigid jobs)."""
    keep = cost <= 0
    if cost.size == 0:
        return keep
    column_gpus = gpus[0]
    for value in np.unique(model):
        cols = np.flatnonzero(model == value)
        if cols.size < 2:
            continue
        cols = cols[np.argsort(column_gpus[cols], kind="stable")]
        sub = cost[:, cols]
        shifted = np.concatenate([np.full((sub.shape[0], 1), np.inf), sub[:, :-1]], axis=1)
        best_before = np.minimum.accumulate(shifted, axis=1)  # over no more GPUs
        keep[:, cols] &= sub <= best_before
    return keep


def _solve(
    problem: _Choices, n_jobs: int, capacity: IntArray, rel_gap: float, solver: str
) -> npt.NDArray[np.bool_]:
    """The chosen variables, as a mask."""
    if problem.size == 0:
        return np.zeros(0, dtype=bool)
    usable = _usable_capacity(problem, n_jobs, capacity)
    updates = problem.size * math.prod(int(c) + 1 for c in usable)
    if solver == "dp" or (solver == "auto" and updates <= DP_MAX_UPDATES):
        return _solve_by_dp(problem, usable)
    return _solve_by_highs(problem, n_jobs, capacity, rel_gap)


def _usable_capacity(problem: _Choices, n_jobs: int, capacity: IntArray) -> IntArray:
    """Per model, the capacity or what the jobs could use at most there (the sum of
    each job's largest choice on it), whichever is less: the DP needs no more states."""
    largest = np.zeros((n_jobs, capacity.size), dtype=np.int64)
    np.maximum.at(largest, (problem.job, problem.model), problem.gpus)
    return np.asarray(np.minimum(capacity, largest.sum(axis=0)), dtype=np.int64)


def _solve_by_dp(problem: _Choices, usable: IntArray) -> npt.NDArray[np.bool_]:
    """Exact dynamic program over GPUs used per model. After each job, `least[u]` is the
    least cost of the jobs so far using at most `u` GPUs of each model. Walking back from
    the full capacity, each job's choice is the one that reproduces its `least` (the same
    float sum, so equality is exact). Ties keep the job out, then go to its first choice,
    and an earlier job keeps what a later one would tie with."""
    shape = tuple(int(c) + 1 for c in usable)
    least = np.zeros(shape)
    steps = []
    for rows in _rows_by_job(problem.job):
        pinned = rows[problem.pinned[rows]]
        if pinned.size:
            rows, after = pinned, np.full(shape, np.inf)
        else:
            after = least.copy()  # the job left out
        for var in rows:
            model, gpus = int(problem.model[var]), int(problem.gpus[var])
            if gpus < shape[model]:
                into, source = _shift(shape, model, gpus)
                np.minimum(after[into], least[source] + problem.cost[var], out=after[into])
        steps.append((rows, bool(pinned.size), least))
        least = after
    usage = [int(c) for c in usable]
    if not np.isfinite(least[tuple(usage)]):
        raise ValueError("Sia ILP infeasible: the pinned jobs need more GPUs than there are")
    chosen = np.zeros(problem.size, dtype=bool)
    for rows, forced, before in reversed(steps):
        value = least[tuple(usage)]
        if not forced and before[tuple(usage)] == value:
            least = before
            continue
        var = next(v for v in rows if _reproduces(problem, int(v), before, usage, value))
        chosen[var] = True
        usage[int(problem.model[var])] -= int(problem.gpus[var])
        least = before
    return chosen


def _reproduces(
    problem: _Choices, var: int, before: FloatArray, usage: list[int], value: float
) -> bool:
    """Whether taking `var` from the state before its job reaches `value` at `usage`."""
    model, gpus = int(problem.model[var]), int(problem.gpus[var])
    if gpus > usage[model]:
        return False
    source = list(usage)
    source[model] -= gpus
    return bool(before[tuple(source)] + problem.cost[var] == value)


def _rows_by_job(job: IntArray) -> Iterator[IntArray]:
    """The variables of each job that has any, job by job."""
    order = np.argsort(job, kind="stable")
    bounds = np.flatnonzero(np.diff(job[order])) + 1
    yield from np.split(order, bounds)


def _shift(
    shape: tuple[int, ...], axis: int, by: int
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index pairs for `after[u] ← least[u − by·e_axis]` over every u with u_axis ≥ by."""
    into = [slice(None)] * len(shape)
    source = [slice(None)] * len(shape)
    into[axis] = slice(by, None)
    source[axis] = slice(0, shape[axis] - by)
    return tuple(into), tuple(source)


def _solve_by_highs(
    problem: _Choices, n_jobs: int, capacity: IntArray, rel_gap: float
) -> npt.NDArray[np.bool_]:
    """HiGHS, LP relaxation first. With one choice per job and one capacity row per GPU
    model, a basic LP solution has at most as many fractional jobs as GPU models and is
    often integral, and then it is optimal for the ILP too; only otherwise is the ILP
    solved (HiGHS spends ~5 ms setting up even a MIP it solves at the root, against
    ~1 ms for the LP)."""
    n_vars, n_models = problem.size, capacity.size
    every = np.arange(n_vars)
    matrix = scipy.sparse.csr_array(
        (
            np.concatenate([np.ones(n_vars), problem.gpus.astype(float)]),
            (np.concatenate([problem.job, n_jobs + problem.model]), np.tile(every, 2)),
        ),
        shape=(n_jobs + n_models, n_vars),
    )
    upper = np.concatenate([np.ones(n_jobs), capacity.astype(float)])
    constraint = scipy.optimize.LinearConstraint(matrix, -np.inf, upper)
    bounds = scipy.optimize.Bounds(problem.pinned.astype(float), np.ones(n_vars))
    relaxed = scipy.optimize.milp(
        problem.cost, constraints=constraint, integrality=np.zeros(n_vars), bounds=bounds
    )
    if relaxed.x is None:
        raise ValueError(f"Sia ILP relaxation failed: {relaxed.message}")
    values = np.asarray(relaxed.x, dtype=float)
    if np.all(np.abs(values - np.round(values)) <= 1e-6):
        return np.round(values) > 0
    result = scipy.optimize.milp(
        problem.cost,
        constraints=constraint,
        integrality=np.ones(n_vars),
        bounds=bounds,
        options={"mip_rel_gap": rel_gap},
    )
    if result.x is None:
        raise ValueError(f"Sia ILP failed: {result.message}")
    return np.round(np.asarray(result.x, dtype=float)) > 0
