"""Gavel's heterogeneity-aware allocation LPs over the time-fraction matrix X.

X is jobs × GPU models; X[i, j] is the share of wall time job i runs on model j. With
throughputs T (work units/s at the job's requested size) the effective throughput is
Σ_j T[i, j]·X[i, j]. Every objective shares Gavel's base constraints: X ≥ 0, each row
sums to at most 1, and Σ_i scale_factor[i]·X[i, j] ≤ GPUs of model j; X[i, j] = 0 where
the job cannot run on j (T = 0). All LPs go through `scipy.optimize.linprog` (HiGHS).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.optimize
import scipy.sparse

FloatArray = npt.NDArray[np.float64]

_BISECTION_STEPS = 40
_RELATIVE_SLACK = 1e-6


def effective_throughput(throughputs: FloatArray, x: FloatArray) -> FloatArray:
    return np.asarray((throughputs * x).sum(axis=1), dtype=float)


def proportional_allocation(capacity: FloatArray, jobs: int) -> FloatArray:
    """Each job gets 1/M of every model's GPUs, rows scaled so the fullest sums to 1
    (Gavel's X_equal, the reference point of max-min fairness)."""
    x = np.tile(np.asarray(capacity, dtype=float) / jobs, (jobs, 1))
    return x / max(x.sum(axis=1).max(), 1e-12)


def isolated_allocation(capacity: FloatArray, scale_factors: FloatArray) -> FloatArray:
    """A 1/M share of the cluster in GPUs, turned into time at each job's scale factor
    and capped at one (Gavel's X_isolated for finish-time fairness)."""
    jobs = scale_factors.size
    x = np.tile(np.asarray(capacity, dtype=float) / jobs, (jobs, 1)) / scale_factors[:, None]
    return x / np.maximum(x.sum(axis=1), 1.0)[:, None]


class _BaseLP:
    """Variables, bounds and base constraints for `m` jobs on `n` models, plus room for
    `extra` further variables after X (row-major)."""

    def __init__(
        self,
        throughputs: FloatArray,
        scale_factors: FloatArray,
        capacity: FloatArray,
        extra: int = 0,
    ) -> None:
        self.m, self.n = throughputs.shape
        self.size = self.m * self.n + extra
        upper = np.where(
            (throughputs > 0) & (scale_factors[:, None] <= capacity[None, :]), 1.0, 0.0
        )
        self.bounds = [(0.0, float(u)) for u in upper.ravel()] + [(None, None)] * extra
        rows, cols, vals = [], [], []
        for i in range(self.m):
            for j in range(self.n):
                rows += [i, self.m + j]
                cols += [i * self.n + j] * 2
                vals += [1.0, float(scale_factors[i])]
        self.a_ub = scipy.sparse.csr_array((vals, (rows, cols)), shape=(self.m + self.n, self.size))
        self.b_ub = np.concatenate([np.ones(self.m), np.asarray(capacity, dtype=float)])

    def solve(
        self,
        cost: FloatArray,
        extra_rows: scipy.sparse.csr_array | None = None,
        extra_b: FloatArray | None = None,
    ) -> FloatArray | None:
        a_ub, b_ub = self.a_ub, self.b_ub
        if extra_rows is not None and extra_b is not None:
            a_ub = scipy.sparse.vstack([a_ub, extra_rows]).tocsr()
            b_ub = np.concatenate([b_ub, extra_b])
        result = scipy.optimize.linprog(
            cost, A_ub=a_ub, b_ub=b_ub, bounds=self.bounds, method="highs"
        )
        if result.status != 0:
            return None
        return np.asarray(result.x, dtype=float)

    def allocation(self, solution: FloatArray) -> FloatArray:
        x = solution[: self.m * self.n].reshape(self.m, self.n)
        return np.asarray(np.clip(x, 0.0, 1.0), dtype=float)


def max_min_fairness(
    throughputs: FloatArray,
    scale_factors: FloatArray,
    capacity: FloatArray,
    weights: FloatArray | None = None,
) -> FloatArray:
    """Gavel's heterogeneity-aware LAS: maximise min_i T_i(X)·sf_i / (w_i·T_i(X_equal)).
    A second LP then maximises the sum of those normalised throughputs while keeping
    every job at the optimal minimum, so capacity the minimum does not need is not left
    idle (the first LP alone is indifferent to it)."""
    m, n = throughputs.shape
    if m == 0:
        return np.zeros((0, n))
    sf = np.asarray(scale_factors, dtype=float)
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=float)
    equal = effective_throughput(throughputs, proportional_allocation(capacity, m))
    norm = np.where(equal > 0, sf / (w * np.where(equal > 0, equal, 1.0)), 0.0)
    coef = throughputs * norm[:, None]
    lp = _BaseLP(throughputs, sf, np.asarray(capacity, dtype=float), extra=1)
    # t − Σ_j coef_ij x_ij ≤ 0 for every job that can run anywhere.
    runnable = np.flatnonzero(coef.sum(axis=1) > 0)
    rows, cols, vals = [], [], []
    for r, i in enumerate(runnable):
        rows += [r] * (n + 1)
        cols += [i * n + j for j in range(n)] + [m * n]
        vals += [-float(c) for c in coef[i]] + [1.0]
    floor = scipy.sparse.csr_array((vals, (rows, cols)), shape=(runnable.size, lp.size))
    cost = np.zeros(lp.size)
    cost[m * n] = -1.0
    first = lp.solve(cost, floor, np.zeros(runnable.size))
    if first is None:
        return np.zeros((m, n))
    best = first[m * n]
    # Second stage: t fixed at (just under) its optimum, maximise Σ coef·x.
    lp.bounds[m * n] = (best * (1 - _RELATIVE_SLACK), None)
    efficient = np.concatenate([-coef.ravel(), [0.0]])
    second = lp.solve(efficient, floor, np.zeros(runnable.size))
    return lp.allocation(second if second is not None else first)


def max_sum_throughput(
    throughputs: FloatArray, scale_factors: FloatArray, capacity: FloatArray
) -> FloatArray:
    """Maximise Σ_ij T[i, j]·X[i, j] (the policy the Sia paper ran Gavel with)."""
    m, n = throughputs.shape
    if m == 0:
        return np.zeros((0, n))
    lp = _BaseLP(throughputs, np.asarray(scale_factors, float), np.asarray(capacity, float))
    solution = lp.solve(-throughputs.ravel())
    return lp.allocation(solution) if solution is not None else np.zeros((m, n))


def finish_time_fairness(
    throughputs: FloatArray,
    scale_factors: FloatArray,
    capacity: FloatArray,
    elapsed_s: FloatArray,
    isolated_elapsed_s: FloatArray,
    remaining: FloatArray,
) -> FloatArray:
    """Themis-style finish-time fairness: minimise max_i ρ_i with
    ρ_i = (elapsed_i + remaining_i/T_i(X)) / (isolated_elapsed_i + remaining_i/T_i(X_iso)).
    ρ_i ≤ ρ is linear in X for fixed ρ (T_i(X) ≥ remaining_i / (ρ·D_i − elapsed_i)), so
    ρ is found by bisection over LP feasibility; a last LP maximises total normalised
    throughput at the optimal ρ."""
    m, n = throughputs.shape
    if m == 0:
        return np.zeros((0, n))
    sf = np.asarray(scale_factors, dtype=float)
    cap = np.asarray(capacity, dtype=float)
    iso = effective_throughput(throughputs, isolated_allocation(cap, sf))
    runnable = iso > 0
    denom = isolated_elapsed_s + np.where(runnable, remaining / np.where(runnable, iso, 1), 0)
    lp = _BaseLP(throughputs, sf, cap)

    def feasible(rho: float) -> FloatArray | None:
        slack = rho * denom - elapsed_s
        if np.any(runnable & (slack <= 0)):
            return None
        need = np.where(runnable, remaining / np.where(runnable, slack, 1.0), 0.0)
        rows = scipy.sparse.csr_array(
            (
                -throughputs[runnable].ravel(),
                (
                    np.repeat(np.arange(int(runnable.sum())), n),
                    (np.flatnonzero(runnable)[:, None] * n + np.arange(n)).ravel(),
                ),
            ),
            shape=(int(runnable.sum()), lp.size),
        )
        per_job = np.where(throughputs > 0, throughputs / np.maximum(iso, 1e-12)[:, None], 0)
        return lp.solve(-per_job.ravel(), rows, -need[runnable])

    x_iso = isolated_allocation(cap, sf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho_iso = (elapsed_s + remaining / effective_throughput(throughputs, x_iso)) / denom
    high = float(np.max(np.where(runnable, rho_iso, 0.0))) * (1 + _RELATIVE_SLACK) + 1e-9
    low = float(np.max(np.where(runnable, elapsed_s / np.where(denom > 0, denom, 1), 0.0)))
    best = feasible(high)
    if best is None:
        return x_iso
    for _ in range(_BISECTION_STEPS):
        if high - low <= 1e-4 * high:
            break
        mid = 0.5 * (low + high)
        attempt = feasible(mid)
        if attempt is None:
            low = mid
        else:
            high, best = mid, attempt
    return lp.allocation(best)
