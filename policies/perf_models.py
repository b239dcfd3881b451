"""Measured performance of deep-learning jobs, as immutable tables.

The Sia/Pollux artifacts profile each model (application) on each GPU model: the step and
all-reduce (sync) time of one optimizer step for a placement and per-GPU batch, and, per
epoch, the gradient statistics that set statistical efficiency. These tables are the
simulator's ground truth and the source of every estimate a policy may use (a 1-GPU
probe, Gavel's oracle throughputs). `traces.sia` reads them from disk.

A placement is the tuple of GPUs per node, e.g. (4, 4) is two nodes of four GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

from policies.jobs import AllocationShape

FloatArray = npt.NDArray[np.float64]


def canonical_placement(gpus_per_node: Sequence[int]) -> tuple[int, ...]:
    """The lexicographically smallest rotation, without empty nodes: how the profiles key
    placements (a ring all-reduce does not care where the ring starts)."""
    counts = tuple(int(g) for g in gpus_per_node if g)
    if not counts:
        return ()
    return min(counts[i:] + counts[:i] for i in range(len(counts)))


def packed_placement(gpus: int, gpus_per_node: int) -> tuple[int, ...]:
    """`gpus` on as few nodes as possible: whole nodes, then the remainder."""
    whole, rest = divmod(gpus, gpus_per_node)
    return (gpus_per_node,) * whole + ((rest,) if rest else ())


@dataclass(frozen=True, slots=True)
class StepRow:
    """One measured configuration."""

    placement: tuple[int, ...]
    local_bsz: int
    step_time: float
    sync_time: float


class StepTable:
    """Step and sync time of one application on one GPU model.

    Exact placements interpolate linearly in the per-GPU batch. Other placements use the
    exact rows (averaged per point) and the scalability rows: linearly in the batch along
    the rows with the same node and GPU count when there are any, else linearly over
    (nodes, GPUs, batch) as the Sia simulator does. The batch is clamped to the profiled
    range and the node count to the largest profiled one; failing all that, the nearest
    profiled point is used. (Querying the 3-D interpolator outside its hull can take
    seconds, and along a profiled line it gives the 1-D answer anyway.)
    """

    def __init__(self, gpu_model: str, placements: Sequence[StepRow], scaling: Sequence[StepRow]):
        if not placements:
            raise ValueError(f"{gpu_model}: no placement rows")
        self.gpu_model = gpu_model
        self._exact: dict[tuple[int, ...], tuple[FloatArray, FloatArray, FloatArray]] = {}
        by_placement: dict[tuple[int, ...], list[StepRow]] = {}
        for row in placements:
            by_placement.setdefault(canonical_placement(row.placement), []).append(row)
        for key, rows in by_placement.items():
            rows.sort(key=lambda r: r.local_bsz)
            self._exact[key] = (
                np.array([r.local_bsz for r in rows], dtype=float),
                np.array([r.step_time for r in rows], dtype=float),
                np.array([r.sync_time for r in rows], dtype=float),
            )
        self.min_local_bsz = min(r.local_bsz for r in placements)
        self.max_local_bsz = max(r.local_bsz for r in placements)
        everything = [*placements, *scaling]
        self.max_nodes = max(len(r.placement) for r in everything)
        self.max_replicas = max(sum(r.placement) for r in everything)
        self._max_local_by_replicas: dict[int, int] = {}
        for row in placements:
            k = sum(row.placement)
            self._max_local_by_replicas[k] = max(
                self._max_local_by_replicas.get(k, 0), row.local_bsz
            )
        self._scaling = list(scaling)
        self._grid: tuple[LinearNDInterpolator, NearestNDInterpolator] | None = None
        self._lines: dict[tuple[int, int], tuple[FloatArray, FloatArray, FloatArray]] = {}
        self._cache: dict[tuple[tuple[int, ...], float], tuple[float, float]] = {}
        singles = [r for r in placements if sum(r.placement) == 1]
        self.probe_throughput = (
            max(r.local_bsz for r in singles) / max(r.step_time for r in singles)
            if singles
            else 0.0
        )
        """Samples/s at the largest 1-GPU batch (largest batch over largest step time, as
        the Sia simulator's projection ratio reads it)."""

    def max_local_for(self, replicas: int) -> int | None:
        """Largest profiled per-GPU batch at this GPU count (the memory limit the profiles
        show), or None when no exact placement has that count."""
        return self._max_local_by_replicas.get(replicas)

    def max_local_on(self, placement: tuple[int, ...]) -> int:
        """Largest per-GPU batch profiled on this placement (or on any wider one)."""
        key = canonical_placement(placement)
        if key in self._exact:
            return int(self._exact[key][0].max())
        nodes, gpus = len(key), sum(key)
        wider = [
            r.local_bsz
            for r in self._scaling
            if len(r.placement) >= nodes and sum(r.placement) >= gpus
        ]
        return max(wider) if wider else self.max_local_bsz

    def step_sync(self, placement: Sequence[int], local_bsz: float) -> tuple[float, float]:
        """(step time, sync time) in seconds; sync is clamped into [0, step]."""
        key = canonical_placement(placement)
        if not key:
            raise ValueError("an empty placement has no step time")
        cache_key = (key, float(local_bsz))
        hit = self._cache.get(cache_key)
        if hit is None:
            step, sync = self._lookup(key, float(local_bsz))
            hit = (step, min(max(sync, 0.0), step))
            self._cache[cache_key] = hit
        return hit

    def _lookup(self, key: tuple[int, ...], local_bsz: float) -> tuple[float, float]:
        exact = self._exact.get(key)
        if exact is not None:
            bsz, step, sync = exact
            local = float(np.clip(local_bsz, bsz[0], bsz[-1]))
            return float(np.interp(local, bsz, step)), float(np.interp(local, bsz, sync))
        linear, nearest = self._interpolators()
        nodes = min(len(key), self.max_nodes)
        line = self._lines.get((nodes, sum(key)))
        if line is not None:
            bsz, step, sync = line
            local = float(np.clip(local_bsz, bsz[0], bsz[-1]))
            return float(np.interp(local, bsz, step)), float(np.interp(local, bsz, sync))
        local = float(np.clip(local_bsz, self.min_local_bsz, self.max_local_bsz))
        point = np.array([[nodes, sum(key), local]], dtype=float)
        value = linear(point)[0]
        if not np.all(np.isfinite(value)):
            value = nearest(point)[0]
        return float(value[0]), float(value[1])

    def _interpolators(self) -> tuple[LinearNDInterpolator, NearestNDInterpolator]:
        if self._grid is None:
            sums: dict[tuple[float, float, float], list[tuple[float, float]]] = {}
            for key, (bsz, step, sync) in self._exact.items():
                for b, s, y in zip(bsz, step, sync, strict=True):
                    sums.setdefault((len(key), sum(key), b), []).append((s, y))
            points = [(*p, *np.mean(v, axis=0)) for p, v in sums.items()]
            seen = set(sums)
            for row in self._scaling:
                p = (len(row.placement), sum(row.placement), row.local_bsz)
                if p not in seen:
                    points.append((*p, row.step_time, row.sync_time))
                    seen.add(p)
            table = np.array(points, dtype=float)
            xs, ys = table[:, :3], table[:, 3:]
            self._grid = (LinearNDInterpolator(xs, ys), NearestNDInterpolator(xs, ys))
            for nodes, gpus in {(int(r[0]), int(r[1])) for r in table}:
                rows = table[(table[:, 0] == nodes) & (table[:, 1] == gpus)]
                rows = rows[np.argsort(rows[:, 2])]
                self._lines[(nodes, gpus)] = (rows[:, 2], rows[:, 3], rows[:, 4])
        return self._grid


@dataclass(frozen=True)
class EpochTable:
    """Per-epoch training curve of one application, shared by every GPU model.

    Rows come from one validation run per global batch size: cumulative progress (in
    iterations at the initial batch), iterations, and the gradient statistics at the end
    of each epoch. Progress units are what a job accumulates; epoch boundaries are the
    smallest progress any batch size needed, as in the Sia simulator.
    """

    batch_sizes: tuple[int, ...]
    progress: FloatArray
    """(batch sizes × epochs) cumulative progress at the end of each epoch."""
    grad_sqr: FloatArray
    grad_var: FloatArray
    boundaries: FloatArray = field(init=False)
    _sizes: FloatArray = field(init=False, repr=False, compare=False)
    _stats_by_epoch: FloatArray = field(init=False, repr=False, compare=False)
    """(epochs × 2 × batch sizes): sqr and var rows, contiguous per epoch."""

    def __post_init__(self) -> None:
        if len(self.batch_sizes) != self.progress.shape[0]:
            raise ValueError("one progress row per batch size")
        if list(self.batch_sizes) != sorted(self.batch_sizes):
            raise ValueError("batch sizes must ascend")
        object.__setattr__(self, "boundaries", self.progress.min(axis=0))
        object.__setattr__(self, "_sizes", np.asarray(self.batch_sizes, dtype=float))
        stats = np.stack([self.grad_sqr.T, self.grad_var.T], axis=1)
        object.__setattr__(self, "_stats_by_epoch", np.ascontiguousarray(stats, dtype=float))

    @property
    def epochs(self) -> int:
        return int(self.progress.shape[1])

    @property
    def init_batch_size(self) -> int:
        return self.batch_sizes[0]

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @property
    def total(self) -> float:
        """Progress at which training is complete (the end of the last epoch)."""
        return float(self.boundaries[-1])

    def epoch_of(self, done: float) -> int:
        """Epochs completed at progress `done` (capped at the last epoch index)."""
        return min(int(np.searchsorted(self.boundaries, done, side="right")), self.epochs - 1)

    def next_boundary(self, done: float) -> float | None:
        """Progress at the end of the epoch under way, or None once training is done."""
        index = int(np.searchsorted(self.boundaries, done, side="right"))
        if index >= self.epochs:
            return None
        return float(self.boundaries[index])

    def grad_stats(self, batch_size: float, epoch: int) -> tuple[float, float]:
        """(sqr, var) during `epoch`, linear in batch size between the profiled ones."""
        sizes = self._sizes
        batch = min(max(float(batch_size), sizes[0]), sizes[-1])
        sqr, var = self._stats_by_epoch[epoch]
        return float(np.interp(batch, sizes, sqr)), float(np.interp(batch, sizes, var))

    def gain(self, batch_size: float, epoch: int) -> float:
        """Progress (iterations at the initial batch) made by one step of `batch_size`."""
        sqr, var = self.grad_stats(batch_size, epoch)
        scale = batch_size / self.init_batch_size
        denom = var / scale + sqr
        return (var + sqr) / denom if denom > 0 else 1.0


@dataclass(frozen=True)
class AppProfile:
    """Everything measured about one application."""

    name: str
    epochs: EpochTable
    tables: Mapping[str, StepTable]
    """Step tables by GPU model name."""
    restart_delay_s: float
    """Checkpoint-restore delay the job pays on every (re)start."""
    slowdown: float = 1.0
    """Real runs were this much slower than the profiles (Sia's calibration)."""
    max_local_override: Mapping[str, int] = field(default_factory=dict)
    """Per GPU model, a tighter per-GPU batch limit than the tables show."""

    def table(self, gpu_model: str) -> StepTable:
        try:
            return self.tables[gpu_model]
        except KeyError:
            raise ValueError(f"{self.name} has no profile for GPU model {gpu_model!r}") from None

    def local_bsz_bounds(self, gpu_model: str) -> tuple[int, int]:
        table = self.table(gpu_model)
        upper = self.max_local_override.get(gpu_model, table.max_local_bsz)
        return table.min_local_bsz, upper


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """How a job splits its global batch: per-GPU atomic batch and accumulation steps."""

    atomic_bsz: int
    accum_steps: int

    def global_batch(self, replicas: int) -> int:
        return replicas * self.atomic_bsz * (self.accum_steps + 1)


def split_batch(
    profile: AppProfile, gpu_model: str, placement: tuple[int, ...], batch_size: float
) -> BatchConfig:
    """A fixed global batch on a placement: accumulate when a GPU cannot hold its share,
    accumulate at least once on one GPU above the initial batch, then cap the atomic batch
    at the memory limit the profiles show (the Sia simulator's rule)."""
    replicas = sum(placement)
    table = profile.table(gpu_model)
    local = math.ceil(batch_size / replicas - 1e-8)
    accum = math.ceil(local / table.max_local_on(placement) - 1e-8) - 1
    if replicas == 1 and batch_size > profile.epochs.init_batch_size:
        accum = max(1, accum)
    atomic = math.ceil(local / (accum + 1) - 1e-8)
    return BatchConfig(*_memory_capped(profile, table, replicas, atomic, accum))


def _memory_capped(
    profile: AppProfile, table: StepTable, replicas: int, atomic: int, accum: int
) -> tuple[int, int]:
    limit = table.max_local_for(replicas)
    if limit is not None:
        atomic = min(atomic, limit)
    atomic = min(atomic, int(profile.epochs.max_batch_size / (replicas * (accum + 1))))
    return max(atomic, 1), accum


def cap_batch(
    profile: AppProfile, gpu_model: str, replicas: int, atomic: int, accum: int
) -> BatchConfig:
    """Apply the memory caps of `split_batch` to a chosen (atomic, accumulation)."""
    return BatchConfig(*_memory_capped(profile, profile.table(gpu_model), replicas, atomic, accum))


def progress_rate(
    profile: AppProfile,
    gpu_model: str,
    placement: tuple[int, ...],
    batch: BatchConfig,
    epoch: int,
) -> float:
    """True progress per second: gain per step over the step time with accumulation,
    slowed by the calibration factor."""
    step, sync = profile.table(gpu_model).step_sync(placement, batch.atomic_bsz)
    iteration = step + (step - sync) * batch.accum_steps
    gain = profile.epochs.gain(batch.global_batch(sum(placement)), epoch)
    return gain / iteration / profile.slowdown


@dataclass(frozen=True, eq=False)
class PlacementThroughput:
    """`steps` of work at measured steps/s per GPU model, consolidated (one node) or
    unconsolidated (spread over nodes), as Gavel's throughput file gives them. A model
    missing from a table (or at 0) cannot run the job."""

    steps: float
    consolidated: Mapping[str, float]
    unconsolidated: Mapping[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.steps

    def rate(self, shape: AllocationShape, done: float) -> float:
        table = self.unconsolidated if shape.num_nodes > 1 else self.consolidated
        models = shape.gpu_models or (shape.gpu_model,)
        # A job straddling GPU models runs at the pace of its slowest GPUs.
        return min(table.get(m, self.consolidated.get(m, 0.0)) for m in models)
