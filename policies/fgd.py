"""Fragmentation Gradient Descent (FGD; Weng et al., USENIX ATC'23).

Each task goes where it increases the expected GPU fragmentation of the cluster least:
for every feasible node (and, for a sharing task, every GPU on it with room) Δ =
F_n'(M) − F_n(M) under the target workload M (see `policies.fragmentation`).

Three modes (docs/fgd.md compares them on the openb traces):

* `score` (default): the paper's integer score int(100·σ((F_n − F_n')/1000)), highest
  wins, with Δ from the type-aware measure (each type also weighted by how few GPUs it
  may use, `fragmentation.scarcity_weights`); among equal scores, the node whose
  CPU-starved GPU (`policies.cpu_starvation`: idle GPU its free CPU cannot feed at the
  workload's CPU per GPU) plus the fragments of the types M's coverage cut leaves out
  (`policies.cut_fragments`) grow least, then the first in a fixed order that is a hash
  of the node names (`tie_ranks`). Within the node a sharing task takes a GPU of the
  best score, the tightest on ties.
* `artifact`: the upstream simulator exactly: the paper's measure and score, ties to
  the first node name (its forked kube-scheduler's rule; its simulator gives the nodes
  random names per seed); the GPU is the first with the best score.
* `exact`: minimise the float Δ; nodes within `tolerance_milli` of the best are
  near-ties, broken by packing: least idle GPU, then least free CPU, then the first
  node name. Within the node a sharing task takes the GPU of least Δ, near-ties to the
  tightest GPU.

Δ is weighed on the used feasible nodes and, per kind of node, the free one the tie-break
puts first (`_candidates`): free nodes of one kind have equal Δ, and at moderate load
most of a large cluster is free. The per-type differences behind Δ are kept per task
shape and node and refreshed only for nodes that changed (`DeltaCache`).

Where M comes from, in order: the `workload` config field (the inflation experiment
builds it from the trace before inflation); the job list given to `prepare()` before a
run, by a caller that wants the whole trace's M in a replay (neither host calls it: both
use the next rule, so they agree); else the jobs in the snapshot (pending and running),
which is what a live controller has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from policies.base import Context, PlacementConfig, PlacementPolicy, PolicyConfig, Snapshot
from policies.cluster import ClusterState, IntArray
from policies.cpu_starvation import cpu_per_gpu_milli, gpu_fed_per_cpu, starvation_change
from policies.cut_fragments import CutFragments
from policies.decisions import SchedulingResult
from policies.delta_cache import DeltaCache
from policies.fragmentation import FloatArray, NodeFragmentation, WorkloadArrays
from policies.jobs import JobSpec, Placement, TaskPlacement, TaskRequest
from policies.placement import feasible_kind_leaders, select_gpus
from policies.target_workload import (
    DEFAULT_COVERAGE,
    TargetWorkload,
    workload_from_counts,
    workload_from_jobs,
)
from policies.task_mix import count_tasks

MODES = ("score", "artifact", "exact")
FLOAT_SLACK = 1e-9
"""Δ values this close count as equal in exact mode even with zero tolerance."""


@dataclass(frozen=True)
class FgdConfig(PlacementConfig):
    mode: str = field(
        default="score",
        metadata={
            "help": "score: int sigmoid score of the type-aware Δ, ties to the least "
            "CPU-starved GPU plus cut types' fragments, then hashed names; artifact: "
            "the paper's Δ and score, first-name ties; exact: float Δ with tolerance, "
            "packing ties"
        },
    )
    tolerance_milli: float = field(
        default=100.0,
        metadata={"help": "exact mode: Δ within this many milli-GPU of the best is a tie"},
    )
    coverage: float = field(
        default=DEFAULT_COVERAGE,
        metadata={"help": "share of tasks the target workload's task types must cover"},
    )
    workload: TargetWorkload | None = field(
        default=None,
        metadata={"help": "target workload; default: from prepare() jobs, else the snapshot"},
    )
    delta_cache_shapes: int = field(
        default=256,
        metadata={
            "help": "task shapes whose per-node Δ is kept between calls (LRU); 0 recomputes "
            "every candidate each call (same placements, ~4x slower; for measurement)"
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fgd mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.tolerance_milli < 0:
            raise ValueError("fgd tolerance_milli must be >= 0")
        if not 0 < self.coverage <= 1:
            raise ValueError("fgd coverage must be in (0, 1]")
        if self.workload is not None and not isinstance(self.workload, TargetWorkload):
            raise ValueError("fgd workload must be a TargetWorkload")
        if self.delta_cache_shapes < 0:
            raise ValueError("fgd delta_cache_shapes must be >= 0")


class Fgd(PlacementPolicy):
    name = "fgd"
    config_type: ClassVar[type[PolicyConfig]] = FgdConfig

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        self._prepared: TargetWorkload | None = None
        self._fragmentation: NodeFragmentation | None = None
        self._deltas: DeltaCache | None = None
        self._cut = CutFragments(self.settings.delta_cache_shapes)
        self._tie_ranks: tuple[tuple[object, ...], IntArray, IntArray] | None = None
        self._score_bounds: FloatArray | None = None
        self._fed: tuple[tuple[object, WorkloadArrays, FloatArray], FloatArray] | None = None

    @property
    def settings(self) -> FgdConfig:
        assert isinstance(self.config, FgdConfig)
        return self.config

    def prepare(self, jobs: Sequence[JobSpec]) -> None:
        """Take the target workload from the whole job list (a trace replay knows it)."""
        self._prepared = workload_from_jobs(jobs, self.settings.coverage)

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        if not snapshot.pending:
            return SchedulingResult()
        self._use_workload(self._workload_for(snapshot))
        return super().schedule(snapshot, ctx)

    def _workload_for(self, snapshot: Snapshot) -> TargetWorkload:
        if self.settings.workload is not None:
            return self.settings.workload
        if self._prepared is not None:
            return self._prepared
        counts = snapshot.task_mix
        if counts is None:  # a host that keeps no count: count the snapshot's jobs
            counts = count_tasks(view.spec for view in (*snapshot.pending, *snapshot.running))
        return workload_from_counts(counts, self.settings.coverage)

    def _use_workload(self, workload: TargetWorkload) -> None:
        if self.settings.mode == "score":
            self._cut.use(workload)
        current = self._fragmentation
        if current is not None and (current.workload is workload or current.reweight(workload)):
            return  # the node terms and cached differences still hold
        self._fragmentation = NodeFragmentation(workload, self.settings.mode == "score")
        self._deltas = DeltaCache(self._fragmentation, self.settings.delta_cache_shapes)

    # -- placement ----------------------------------------------------------------------

    def place_task(
        self, spec: JobSpec, task: TaskRequest, state: ClusterState, ctx: Context
    ) -> TaskPlacement | None:
        candidates = self._candidates(spec, task, state)
        if candidates.size == 0:
            return None
        deltas = self._candidate_deltas(task, state, candidates)
        if self.settings.mode == "exact":
            node, gpus = self._pick_exact(task, state, candidates, deltas)
        else:
            node, gpus = self._pick_by_score(task, state, candidates, deltas)
        state.allocate(node, gpus, task.gpu_milli, task.cpu_milli, task.mem_mib)
        return TaskPlacement(state.nodes[node].name, gpus, task.gpu_milli)

    def _candidates(self, spec: JobSpec, task: TaskRequest, state: ClusterState) -> IntArray:
        """The feasible nodes, each kind's free ones stood for by the one its tie-break
        puts first: free nodes of one kind have the same Δ, so no other can win. At
        moderate load most of a large cluster is free (FGD packs), so this leaves the
        used nodes and a node or two of each kind to weigh Δ on, not 12,500. The tie
        order is the hashed names' in score mode, else the node order (exact mode
        first packs, which free nodes of one kind do alike)."""
        order = self._rank_order(state) if self.settings.mode == "score" else None
        return feasible_kind_leaders(spec, task, state, order)

    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        """The integer score, or −Δ in exact mode (higher is better in both)."""
        deltas = self._candidate_deltas(task, state, candidates)
        if self.settings.mode == "exact":
            return -deltas.min(axis=1)
        return artifact_scores(deltas).max(axis=1).astype(np.float64)

    def _candidate_deltas(
        self, task: TaskRequest, state: ClusterState, candidates: IntArray
    ) -> FloatArray:
        if self._deltas is None:
            raise RuntimeError("fgd: schedule() sets the target workload before placing")
        return self._deltas.get(task, state, candidates)

    def _pick_by_score(
        self, task: TaskRequest, state: ClusterState, candidates: IntArray, deltas: FloatArray
    ) -> tuple[int, tuple[int, ...]]:
        # The score never rises with Δ (tests/test_fgd_incremental.py), so a node scores
        # as its least-Δ slot, the best score is the least Δ's, and the nodes that share
        # it are those below that score's bound: no sigmoid per candidate.
        node_delta = deltas.min(axis=1) if deltas.shape[1] > 1 else deltas[:, 0]
        least, bounds = node_delta.min(), self._bounds()
        best_score = int(np.count_nonzero(least < bounds[1:])) if np.isfinite(least) else -1
        tied = node_delta < bounds[best_score] if best_score >= 0 else node_delta >= 0
        if self.settings.mode == "artifact":
            row = int(tied.argmax())  # the first node (name order) with the best
        else:
            best = np.flatnonzero(tied) if best_score >= 0 else np.arange(node_delta.size)
            row = self._break_tie(task, state, candidates, best)
        node = int(candidates[row])
        if not task.is_sharing:
            return node, select_gpus(task, state.gpu_free[node], state.gpu_count[node])
        scores = artifact_scores(deltas[row])
        if self.settings.mode == "artifact":
            return node, (int(scores.argmax()),)  # the first GPU with the best score
        top = scores == scores.max()
        free = state.gpu_free[node].astype(np.float64)
        return node, (int(np.argmin(np.where(top, free, np.inf))),)

    def _break_tie(
        self, task: TaskRequest, state: ClusterState, candidates: IntArray, best: IntArray
    ) -> int:
        """The row among `best` (equal scores) whose node's CPU-starved GPU plus the cut
        types' fragments grow least (`policies.cpu_starvation`, `policies.cut_fragments`),
        then the first in the hashed-name order."""
        if best.size == 1:
            return int(best[0])
        nodes = candidates[best]
        fed = self._gpu_fed_per_cpu(state)[state.model_idx[nodes]]
        growth = starvation_change(state, task, nodes, fed)
        if self._cut.share > 0:
            growth = np.round(growth + self._cut.change(task, state, nodes), 6)
        least = best[growth == growth.min()]
        return int(least[self._ranks(state)[candidates[least]].argmin()])

    def _gpu_fed_per_cpu(self, state: ClusterState) -> FloatArray:
        """1/ρ per GPU model, kept while the cluster, the measure's columns and its Δ weights
        are the same objects (the last two are replaced, never changed in place)."""
        assert self._fragmentation is not None
        arrays, weights = self._fragmentation.arrays, self._fragmentation.delta_weights
        key = (state.nodes, arrays, weights)
        if self._fed is None or any(a is not b for a, b in zip(self._fed[0], key, strict=True)):
            self._fed = (key, gpu_fed_per_cpu(cpu_per_gpu_milli(arrays, weights)))
        return self._fed[1]

    def _bounds(self) -> FloatArray:
        if self._score_bounds is None:
            self._score_bounds = score_bounds()
        return self._score_bounds

    def _ranks(self, state: ClusterState) -> IntArray:
        return self._tie_order(state)[1]

    def _rank_order(self, state: ClusterState) -> IntArray:
        """The nodes from the first in the tie order to the last."""
        return self._tie_order(state)[2]

    def _tie_order(self, state: ClusterState) -> tuple[tuple[object, ...], IntArray, IntArray]:
        if self._tie_ranks is None or self._tie_ranks[0] is not state.nodes:
            ranks = tie_ranks([n.name for n in state.nodes])
            self._tie_ranks = (state.nodes, ranks, np.argsort(ranks))
        return self._tie_ranks

    def _pick_exact(
        self, task: TaskRequest, state: ClusterState, candidates: IntArray, deltas: FloatArray
    ) -> tuple[int, tuple[int, ...]]:
        slack = self.settings.tolerance_milli + FLOAT_SLACK
        node_delta = deltas.min(axis=1)
        near = node_delta <= node_delta.min() + slack
        row = int(np.flatnonzero(near)[packing_order(state, candidates[near])[0]])
        node = int(candidates[row])
        if not task.is_sharing:
            return node, select_gpus(task, state.gpu_free[node], state.gpu_count[node])
        gpu_delta = deltas[row]
        near_gpu = gpu_delta <= gpu_delta.min() + slack
        free = state.gpu_free[node].astype(np.float64)
        return node, (int(np.argmin(np.where(near_gpu, free, np.inf))),)

    def explain(self, spec: JobSpec, placement: Placement) -> str:
        return f"fgd ({self.settings.mode}): {placement.tasks[0].node} least raises fragmentation"


def artifact_scores(deltas: FloatArray) -> IntArray:
    """int(100·σ(−Δ/1000)) per candidate slot; −1 where the slot cannot take the task."""
    with np.errstate(over="ignore"):
        sigmoid = 1.0 / (1.0 + np.exp(deltas / 1000.0))
    scores = np.trunc(sigmoid * 100.0).astype(np.int64)
    return np.where(np.isfinite(deltas), scores, -1)


def score_bounds() -> FloatArray:
    """bounds[k] for k = 0..100: the least Δ that `artifact_scores` puts below k (+inf for
    k = 0), found by bisection over the float64 values in order. As the score never
    rises with Δ, a finite Δ scores at least k exactly when it is below bounds[k], and
    its score is the number of k ≥ 1 it is below."""
    wanted = np.arange(1, 101)
    low = np.full(wanted.size, _ordered(-1e7))  # scores 100
    high = np.full(wanted.size, _ordered(1e7))  # scores 0
    while True:
        gap = high.view(np.uint64) - low.view(np.uint64)  # no int64 overflow
        open_ = gap > 1
        if not open_.any():
            break
        middle = (low.view(np.uint64) + gap // np.uint64(2)).view(np.int64)
        high_enough = artifact_scores(_float_of(middle)) >= wanted
        low = np.where(open_ & high_enough, middle, low)
        high = np.where(open_ & ~high_enough, middle, high)
    return np.concatenate(([np.inf], _float_of(high)))


_SIGN = -(1 << 63)


def _ordered(value: float) -> IntArray:
    """An int64 that orders float64 values as they compare (−0.0 and 0.0 alike)."""
    bits = np.array(value, dtype=np.float64).view(np.int64)
    return np.where(bits < 0, _SIGN - bits, bits)


def _float_of(keys: IntArray) -> FloatArray:
    return np.where(keys < 0, _SIGN - keys, keys).view(np.float64)


def tie_ranks(names: Sequence[str]) -> IntArray:
    """Each node's place in the default's tie order: names sorted by a 64-bit hash
    (FNV-1a, then splitmix64's finaliser, so names one character apart land far
    apart). The order is fixed, so tasks the score cannot tell apart still land
    together, and unrelated to how nodes are named (docs/fgd.md §3)."""
    keys = [_mix(_fnv1a(name)) for name in names]
    ranks = np.empty(len(names), dtype=np.int64)
    ranks[sorted(range(len(names)), key=lambda i: (keys[i], names[i]))] = np.arange(len(names))
    return ranks


_MASK = (1 << 64) - 1


def _fnv1a(text: str) -> int:
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * 0x100000001B3) & _MASK
    return value


def _mix(value: int) -> int:
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def packing_order(state: ClusterState, nodes: IntArray) -> IntArray:
    """Positions in `nodes` from the tightest packing to the loosest: least idle GPU,
    then least free CPU, then the order given (node names). Every candidate loses the
    same request, so comparing before the task is the same as after."""
    gpu_left = state.gpu_free[nodes].sum(axis=1)
    cpu_left = state.cpu_free[nodes]
    return np.lexsort((np.arange(nodes.size), cpu_left, gpu_left))
