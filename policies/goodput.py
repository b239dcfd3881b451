"""The Pollux goodput model: throughput × statistical efficiency, and its fitting.

Throughput (samples/s) of data-parallel SGD with K replicas on n nodes, per-GPU (atomic)
batch m and s gradient-accumulation steps:

    T_comp = α_c + β_c·m
    T_net  = α_r + β_r·max(K−2, ε)   one node, K > 1  (intra-node all-reduce)
           = α_n + β_n·max(K−2, ε)   several nodes    (inter-node all-reduce)
           ≈ 0                       K = 1
    T_step = (T_comp^γ + T_net^γ)^(1/γ)      γ ∈ [1, 10]: 1 = no overlap, large = max
    T_iter = s·T_comp + T_step,   M = K·m·(s+1),   throughput = M / T_iter

Statistical efficiency with the gradient noise scale φ = M0·var/sqr:
EFF(M) = (φ + M0)/(φ + M), and goodput = throughput × EFF, in samples at the initial
batch M0 per second. Everything here is plain numpy/scipy on value objects, shared by the
policies (estimates) and by the simulator's model of a job's own batch-size tuning.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.optimize

from policies.cluster import read_only

FloatArray = npt.NDArray[np.float64]

TINY = 1e-8
"""Stands in for zero network time (one replica) and is the lower bound of every fitted
parameter, as in Pollux, so logarithms and ratios stay finite."""
BATCH_GRID = 50
"""Global batch sizes tried, geometrically spaced, when optimising goodput."""
_GRID_STEPS = read_only(np.linspace(0.0, 1.0, BATCH_GRID)[:, None])


@dataclass(frozen=True, slots=True)
class PerfParams:
    """Fitted step-time model of one job on one GPU model."""

    alpha_c: float
    beta_c: float
    alpha_n: float
    beta_n: float
    alpha_r: float
    beta_r: float
    gamma: float

    def as_array(self) -> FloatArray:
        return np.array(
            [
                self.alpha_c,
                self.beta_c,
                self.alpha_n,
                self.beta_n,
                self.alpha_r,
                self.beta_r,
                self.gamma,
            ]
        )


@dataclass(frozen=True, slots=True)
class GradParams:
    """Running estimates of the squared gradient norm and the gradient variance."""

    sqr: float
    var: float


def compute_time(params: PerfParams, atomic_bsz: npt.ArrayLike) -> FloatArray:
    return params.alpha_c + params.beta_c * np.asarray(atomic_bsz, dtype=float)


def network_time(params: PerfParams, nodes: npt.ArrayLike, replicas: npt.ArrayLike) -> FloatArray:
    replicas = np.asarray(replicas, dtype=float)
    # Link kind: 0 one GPU, 1 within a node, 2 across nodes.
    kind = np.where(np.asarray(nodes) > 1, 2, replicas > 1)
    alpha = np.array([TINY, params.alpha_r, params.alpha_n])[kind]
    beta = np.array([TINY, params.beta_r, params.beta_n])[kind]
    return np.asarray(alpha + beta * np.maximum(replicas - 2, TINY), dtype=float)


def step_time(params: PerfParams, comp: FloatArray, net: FloatArray) -> FloatArray:
    """(comp^γ + net^γ)^(1/γ), computed in log space against overflow."""
    gamma = params.gamma
    return np.exp(np.logaddexp(gamma * np.log(comp), gamma * np.log(net)) / gamma)


def throughput(
    params: PerfParams,
    nodes: npt.ArrayLike,
    replicas: npt.ArrayLike,
    atomic_bsz: npt.ArrayLike,
    accum_steps: npt.ArrayLike,
) -> FloatArray:
    """Samples per second."""
    comp = compute_time(params, atomic_bsz)
    net = network_time(params, nodes, replicas)
    accum = np.asarray(accum_steps, dtype=float)
    iteration = accum * comp + step_time(params, comp, net)
    batch = np.asarray(replicas, dtype=float) * np.asarray(atomic_bsz, dtype=float) * (accum + 1)
    return np.asarray(batch / iteration, dtype=float)


def efficiency(grad: GradParams, init_batch_size: float, batch_size: npt.ArrayLike) -> FloatArray:
    """Progress per sample at `batch_size` relative to the initial batch: (φ+M0)/(φ+M)."""
    scale = np.asarray(batch_size, dtype=float) / init_batch_size
    denom = grad.var / scale + grad.sqr
    gain = np.where(denom > 0, (grad.var + grad.sqr) / np.where(denom > 0, denom, 1.0), 1.0)
    return np.asarray(gain / scale, dtype=float)


@dataclass(frozen=True, slots=True)
class BatchChoice:
    """The best (atomic batch, accumulation steps) for an allocation and its goodput."""

    goodput: float
    atomic_bsz: int
    accum_steps: int

    @property
    def per_replica(self) -> int:
        return self.atomic_bsz * (self.accum_steps + 1)


@dataclass(frozen=True, slots=True)
class GoodputFunction:
    """Goodput of one job on one GPU model: fitted throughput × efficiency."""

    perf: PerfParams
    grad: GradParams
    init_batch_size: int

    def throughput(
        self,
        nodes: npt.ArrayLike,
        replicas: npt.ArrayLike,
        atomic_bsz: npt.ArrayLike,
        accum_steps: npt.ArrayLike,
    ) -> FloatArray:
        return throughput(self.perf, nodes, replicas, atomic_bsz, accum_steps)

    def efficiency(self, batch_size: npt.ArrayLike) -> FloatArray:
        return efficiency(self.grad, self.init_batch_size, batch_size)

    def evaluate(
        self,
        nodes: npt.ArrayLike,
        replicas: npt.ArrayLike,
        atomic_bsz: npt.ArrayLike,
        accum_steps: npt.ArrayLike,
    ) -> FloatArray:
        batch = (
            np.asarray(replicas, dtype=float)
            * np.asarray(atomic_bsz, dtype=float)
            * (np.asarray(accum_steps, dtype=float) + 1)
        )
        tput = self.throughput(nodes, replicas, atomic_bsz, accum_steps)
        return np.asarray(tput * self.efficiency(batch), dtype=float)

    def optimize(
        self,
        nodes: npt.ArrayLike,
        replicas: npt.ArrayLike,
        max_batch_size: float,
        atomic_bsz_range: tuple[int, int],
        tune_batch: bool = True,
    ) -> tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Best goodput per (nodes, replicas) pair over a geometric grid of global batches
        (or exactly `max_batch_size` when not tuning), with gradient accumulation when the
        per-replica batch exceeds the largest atomic batch. Returns (goodput, atomic batch,
        accumulation steps) arrays; goodput is 0 where no batch fits the atomic range."""
        nodes_a, replicas_a = np.broadcast_arrays(
            np.asarray(nodes, dtype=float), np.asarray(replicas, dtype=float)
        )
        grid = _batch_grid(
            self.init_batch_size,
            (int(atomic_bsz_range[0]), int(atomic_bsz_range[1])),
            float(max_batch_size),
            tune_batch,
            tuple(replicas_a.ravel().tolist()),
        )
        atomic, accum = grid.atomic, grid.accum
        goodput = self.evaluate(nodes_a.ravel(), grid.replicas, atomic, accum)
        goodput[grid.invalid] = 0.0
        best = np.argmax(goodput, axis=0)
        cols = np.arange(goodput.shape[1])
        return (
            goodput[best, cols],
            atomic[best, cols].astype(np.int64),
            accum[best, cols].astype(np.int64),
        )

    def best_batch(
        self,
        nodes: int,
        replicas: int,
        max_batch_size: float,
        atomic_bsz_range: tuple[int, int],
        tune_batch: bool = True,
    ) -> BatchChoice:
        goodput, atomic, accum = self.optimize(
            nodes, replicas, max_batch_size, atomic_bsz_range, tune_batch
        )
        return BatchChoice(float(goodput[0]), int(atomic[0]), int(accum[0]))


class _BatchGrid(NamedTuple):
    """The batches `GoodputFunction.optimize` tries, one column per replica count: atomic
    batch and accumulation steps per grid row, and which rows fall outside the atomic
    range."""

    replicas: FloatArray
    atomic: FloatArray
    accum: FloatArray
    invalid: npt.NDArray[np.bool_]


@functools.lru_cache(maxsize=1024)
def _batch_grid(
    init_batch_size: int,
    atomic_bsz_range: tuple[int, int],
    max_batch_size: float,
    tune_batch: bool,
    replicas: tuple[float, ...],
) -> _BatchGrid:
    """The grid depends on a job's batch limits and GPU counts, not on its fitted model,
    and a simulation asks for the same few hundred grids hundreds of thousands of times:
    a memo of this pure function (read-only arrays) saves ~40% of each optimisation."""
    replicas_a = np.array(replicas, dtype=float)
    min_atomic, max_atomic = atomic_bsz_range
    if tune_batch:
        low = np.maximum(init_batch_size, min_atomic * replicas_a)
        ratio = np.maximum(low, max_batch_size) / low
        batch = low * ratio**_GRID_STEPS  # geometric grid from low to the maximum
    else:
        batch = np.full((1, replicas_a.size), max_batch_size)
    local = batch / replicas_a
    accum = np.ceil(local / max_atomic - TINY) - 1
    # One replica accumulates at least once above M0: Pollux needs two micro-batches
    # per step to estimate the gradient noise.
    accum = np.where(
        (replicas_a == 1) & (local > init_batch_size + TINY), np.maximum(accum, 1), accum
    )
    accum = np.maximum(accum, 0)
    atomic = np.ceil(local / (accum + 1) - TINY)
    grid = _BatchGrid(replicas_a, atomic, accum, (atomic < min_atomic) | (atomic > max_atomic))
    for array in grid:
        array.flags.writeable = False
    return grid


# -- fitting -------------------------------------------------------------------------

_REG_GAMMA = 1e-3
_REG_RETRO = 1e-2
_SMOOTH = 1e-12
"""Keeps the RMSE differentiable at a perfect fit (zero residuals)."""
_FTOL, _MAX_ITER = 1e-9, 300
"""Pollux's tol=1e-5 stops far from the minimum of this loss; 1e-9 recovers synthetic
parameters to well within 1% (tests) at a third fewer iterations than 1e-12."""


@dataclass(frozen=True, slots=True)
class StepObservation:
    """One measured configuration: compute time is the step minus its all-reduce part."""

    nodes: int
    replicas: int
    atomic_bsz: int
    step_time: float
    sync_time: float

    @property
    def compute_time(self) -> float:
        return max(self.step_time - self.sync_time, TINY)


def fit_perf_params(
    observations: Sequence[StepObservation], start: PerfParams | None = None
) -> PerfParams:
    """Fit `PerfParams` on Pollux's loss: RMSLE of compute time plus RMSLE of
    step time, a pull of γ towards 1 and of the retrogression terms towards 0. Parameters
    the data cannot inform are pinned (one batch size seen → α_c = mean/2; no multi-node
    data → α_n, β_n at the floor; no one-node multi-GPU data → α_r, β_r; no K > 2 → both
    β). Without multi-node data the prior α_n ≥ 1.1·α_r, β_n ≥ 1.1·β_r is enforced.
    A first fit starts from a least-squares guess read off the measured compute and sync
    times (Pollux's fixed start point often ends in a poor local minimum); `start`
    warm-starts a refit after one more observation."""
    data = _FitData.of(observations)
    return _with_network_prior(
        data, _minimise(data, start.as_array() if start is not None else data.guess())
    )


def fit_perf_params_as_adaptdl(observations: Sequence[StepObservation]) -> PerfParams:
    """Fit `PerfParams` as AdaptDL's client does, the fit the jobs of Sia's simulator
    run: the same loss, pins and prior, minimised by L-BFGS-B from Pollux's fixed start
    with tolerance 1e-5 ("for speed", says the artifact). It often stops short of the
    minimum `fit_perf_params` finds, and what Sia decides follows the models it gets."""
    data = _FitData.of(observations)
    lower, upper, x0 = _bounds(data, _POLLUX_START.copy())
    result = scipy.optimize.minimize(
        data.loss_and_grad,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(lower, upper, keep_feasible=True),
        tol=_ADAPTDL_TOL,
    )
    return _with_network_prior(data, np.asarray(result.x, dtype=float))


def _with_network_prior(data: _FitData, params: FloatArray) -> PerfParams:
    """Without multi-node data, inter-node terms are at least 1.1× the intra-node ones."""
    if not np.any(data.nodes > 1):
        params[2] = max(params[2], params[4] * 1.1)
        params[3] = max(params[3], params[5] * 1.1)
    return PerfParams(*(float(v) for v in params))


def _bounds(data: _FitData, start: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Lower and upper bounds and the start, with unidentifiable parameters pinned."""
    lower = np.array([TINY] * 6 + [1.0])
    upper = np.array([np.inf] * 6 + [10.0])
    _pin_unidentifiable(data, lower, upper, start)
    return lower, upper, np.clip(start, lower, upper)


_POLLUX_START = read_only(np.array([0.1, 0.01] * 3 + [1.001]))
_ADAPTDL_TOL = 1e-5


def _minimise(data: _FitData, start: FloatArray) -> FloatArray:
    """Bounded SLSQP with every parameter scaled by its starting magnitude, since they
    span four orders of magnitude and one tolerance must suit them all. (Pollux uses
    L-BFGS-B; scipy's takes several times longer on these 7-parameter fits, and a
    simulation fits thousands of times.)"""
    lower, upper, x0 = _bounds(data, start.copy())
    scale = np.maximum(np.abs(x0), 1e-3)

    def objective(u: FloatArray) -> tuple[float, FloatArray]:
        loss, grad = data.loss_and_grad(u * scale)
        return loss, grad * scale

    result = scipy.optimize.minimize(
        objective,
        x0 / scale,
        jac=True,
        method="SLSQP",
        bounds=list(zip(lower / scale, upper / scale, strict=True)),
        options={"ftol": _FTOL, "maxiter": _MAX_ITER},
    )
    return np.asarray(np.clip(result.x * scale, lower, upper), dtype=float)


def _pin_unidentifiable(
    data: _FitData, lower: FloatArray, upper: FloatArray, x0: FloatArray
) -> None:
    def pin(index: int, value: float) -> None:
        lower[index] = upper[index] = x0[index] = value

    if np.unique(data.atomic).size == 1:
        pin(0, float(np.mean(data.comp)) / 2)
    if not np.any(data.nodes > 1):
        pin(2, TINY)
        pin(3, TINY)
    if not np.any((data.nodes == 1) & (data.replicas > 1)):
        pin(4, TINY)
        pin(5, TINY)
    if not np.any(data.replicas > 2):
        pin(3, TINY)
        pin(5, TINY)


class _FitData:
    """Observations as arrays, with everything the loss needs that does not depend on
    the parameters computed once (a fit evaluates the loss tens of times). Compute and
    network times are linear in the parameters, so each is one product with a design
    matrix: comp = [1, m]·(α_c, β_c) and net = D·(α_n, β_n, α_r, β_r) + ε·(1 + r) on one
    GPU, where a row of D is [inter, inter·r, intra, intra·r] with r = max(K − 2, ε)."""

    def __init__(self, observations: Sequence[StepObservation]) -> None:
        self.nodes = np.array([o.nodes for o in observations], dtype=float)
        self.replicas = np.array([o.replicas for o in observations], dtype=float)
        self.atomic = np.array([o.atomic_bsz for o in observations], dtype=float)
        self.comp = np.array([o.compute_time for o in observations], dtype=float)
        self.step = np.array([max(o.step_time, TINY) for o in observations], dtype=float)
        self.count = self.comp.size
        self.log_comp = np.log(self.comp)
        self.log_step = np.log(self.step)
        inter = (self.nodes > 1).astype(float)
        intra = ((self.nodes <= 1) & (self.replicas > 1)).astype(float)
        retro = np.maximum(self.replicas - 2, TINY)
        self.comp_design = np.column_stack([np.ones(self.count), self.atomic])
        self.net_design = np.column_stack([inter, inter * retro, intra, intra * retro])
        self.net_single = TINY * (1 - inter - intra) * (1 + retro)

    @staticmethod
    def of(observations: Sequence[StepObservation]) -> _FitData:
        if not observations:
            raise ValueError("fitting needs at least one observation")
        return _FitData(observations)

    def guess(self) -> FloatArray:
        """Least-squares start: compute time linear in the atomic batch, and network time
        α + β·max(K−2, 0) from the measured sync times of each link kind."""
        x = _POLLUX_START.copy()
        if np.unique(self.atomic).size > 1:
            slope, icept = np.polyfit(self.atomic, self.comp, 1)
            x[0], x[1] = max(icept, TINY), max(slope, TINY)
        sync = np.maximum(self.step - self.comp, TINY)
        inter = self.nodes > 1
        intra = ~inter & (self.replicas > 1)
        for mask, at in ((inter, 2), (intra, 4)):
            if mask.any():
                retro = np.maximum(self.replicas[mask] - 2, 0)
                if np.unique(retro).size > 1:
                    slope, icept = np.polyfit(retro, sync[mask], 1)
                else:
                    slope, icept = 0.0, float(np.mean(sync[mask]))
                x[at], x[at + 1] = max(icept, TINY), max(slope, TINY)
        return x

    def loss_and_grad(self, x: FloatArray) -> tuple[float, FloatArray]:
        """Pollux's loss and its exact gradient with respect to the 7 parameters."""
        count = self.count
        gamma = float(x[6])
        # Compute-time error.
        comp = self.comp_design @ x[:2]
        log_c = np.log(comp)
        r1 = log_c - self.log_comp
        err1 = math.sqrt(float(r1 @ r1) / count + _SMOOTH)
        w1 = r1 / (err1 * count) / comp
        # Step-time error.
        net = self.net_design @ x[2:6] + self.net_single
        log_n = np.log(net)
        log_sum = np.logaddexp(gamma * log_c, gamma * log_n)
        r2 = log_sum / gamma - self.log_step
        err2 = math.sqrt(float(r2 @ r2) / count + _SMOOTH)
        w2 = r2 / (err2 * count)
        share_c = np.exp(gamma * log_c - log_sum)  # c^γ / (c^γ + n^γ)
        share_n = 1.0 - share_c
        d_comp = w1 + w2 * share_c / comp
        d_net = w2 * share_n / net
        d_gamma = (share_c * log_c + share_n * log_n - log_sum / gamma) / gamma
        grad = np.empty(7)
        grad[:2] = d_comp @ self.comp_design
        grad[2:6] = d_net @ self.net_design
        grad[6] = w2 @ d_gamma
        a_n, b_n, a_r, b_r = x[2:6].tolist()
        # Regularisers.
        reg = _REG_GAMMA * (gamma - 1) ** 2 + _REG_RETRO * ((b_n / a_n) ** 2 + (b_r / a_r) ** 2)
        grad[6] += 2 * _REG_GAMMA * (gamma - 1)
        grad[3] += 2 * _REG_RETRO * b_n / a_n**2
        grad[2] -= 2 * _REG_RETRO * b_n**2 / a_n**3
        grad[5] += 2 * _REG_RETRO * b_r / a_r**2
        grad[4] -= 2 * _REG_RETRO * b_r**2 / a_r**3
        return err1 + err2 + reg, grad
