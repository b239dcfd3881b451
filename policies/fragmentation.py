"""GPU fragmentation under a target workload (Weng et al., ATC'23, §3 of docs/fgd.md).

A node's idle GPU counts as *fragmented* for a task type when that task cannot use it:

* the task cannot run on the node at all (CPU-only task, wrong GPU model, too little CPU,
  too few GPUs with enough free milli-GPU): every idle milli-GPU is fragmented;
* otherwise only the GPUs with less free than the task's per-GPU request are.

The expected fragmentation of a node under a target workload M (`policies.target_workload`)
is the popularity-weighted sum over task types, F_n(M) = Σ_m p_m · F_n(m); the cluster's
is Σ_n F_n(M).
`scarcity_weights` gives the type-aware variant FGD's default decides by (docs/fgd.md §3):
each type's term also weighted by how few of the cluster's GPUs it may use.

Everything here is vectorised over nodes and task types. `NodeFragmentation` keeps each
node's per-type terms and recomputes only the nodes whose free resources changed, so a
placement costs O(one node) to account for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from policies.cluster import MILLI, ClusterState, IntArray
from policies.gpu_models import family_admits
from policies.jobs import TaskRequest
from policies.target_workload import TargetWorkload, TaskType, type_key

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SPARE_TYPES = 8
"""Columns a `NodeFragmentation` keeps for task types its workload no longer holds (a
live workload's least popular types drop out at the cut-off and come back)."""


class Category(IntEnum):
    """Where a (node, task type) pair falls; the artifact's buckets (frag.go)."""

    Q1_LACK_BOTH = 0
    Q2_LACK_GPU = 1
    Q3_SATISFIED = 2
    Q4_LACK_CPU = 3
    XL_SATISFIED = 4
    XR_LACK_CPU = 5
    NO_ACCESS = 6


class WorkloadArrays:
    """A target workload laid out for one cluster's GPU models (one column per type)."""

    def __init__(self, workload: TargetWorkload, gpu_models: Sequence[str]) -> None:
        self._lay_out(workload.types, gpu_models)

    @classmethod
    def of_types(cls, types: Sequence[TaskType], gpu_models: Sequence[str]) -> WorkloadArrays:
        """Columns for `types`, whose probabilities need not sum to 1."""
        arrays = object.__new__(cls)
        arrays._lay_out(types, gpu_models)
        return arrays

    def _lay_out(self, types: Sequence[TaskType], gpu_models: Sequence[str]) -> None:
        self.cpu: IntArray = np.array([t.task.cpu_milli for t in types], dtype=np.int64)
        self.milli: IntArray = np.array([t.task.gpu_milli for t in types], dtype=np.int64)
        self.num: IntArray = np.array([t.task.num_gpus for t in types], dtype=np.int64)
        self.prob: FloatArray = np.array([t.probability for t in types], dtype=np.float64)
        self.uses_gpu: BoolArray = self.num > 0
        # access[model, type]; the extra last row is for GPU-less nodes (model index -1).
        access = np.ones((len(gpu_models) + 1, len(types)), dtype=bool)
        for j, t in enumerate(types):
            if t.allowed_models is not None:
                access[:-1, j] = [family_admits(t.allowed_models, m) for m in gpu_models]
                access[-1, j] = False
        self.access = access


@dataclass(frozen=True, slots=True)
class NodeTerms:
    """Per-node, per-type integer terms of the measure (rows: nodes, columns: types).

    `small` is the idle milli on GPUs with less free than the type's request, `fit` the
    number of GPUs with at least that much free, `amount` the fragmented milli F_n(m),
    `idle` each node's idle milli U_n.
    """

    small: IntArray
    fit: IntArray
    amount: IntArray
    idle: IntArray


def node_terms(
    arrays: WorkloadArrays, cpu_free: IntArray, gpu_free: IntArray, model_idx: IntArray
) -> NodeTerms:
    """The measure's terms for the nodes given by their rows of free resources."""
    below = gpu_free[:, :, None] < arrays.milli[None, None, :]
    small = (gpu_free[:, :, None] * below).sum(axis=1)
    fit = gpu_free.shape[1] - below.sum(axis=1)
    idle = gpu_free.sum(axis=1)
    runnable = _runnable(arrays, cpu_free, fit, model_idx)
    amount = np.where(runnable, small, idle[:, None])
    return NodeTerms(small, fit, amount, idle)


def _runnable(
    arrays: WorkloadArrays, cpu_free: IntArray, fit: IntArray, model_idx: IntArray
) -> BoolArray:
    """Q3: the type is a GPU task, may use the node's model, and its CPU and GPUs fit."""
    return (
        arrays.uses_gpu[None, :]
        & arrays.access[model_idx]
        & (cpu_free[:, None] >= arrays.cpu[None, :])
        & (fit >= arrays.num[None, :])
    )


def scarcity_weights(arrays: WorkloadArrays, state: ClusterState) -> FloatArray:
    """Per type: the cluster's GPUs ÷ the GPUs of the models the type may use.

    1 for a type that may use every GPU (and for CPU-only types); a T4-only type on a
    cluster with one GPU in eight a T4 gets 8: its arrivals compete for an eighth of
    the GPUs, so each T4 GPU it loses costs it eight times what an unconstrained type
    loses. A type no node can host keeps 1 (its term is the same on every node).
    """
    per_model = np.array(
        [state.gpu_count[state.model_idx == i].sum() for i in range(len(state.gpu_models))],
        dtype=np.float64,
    )
    usable = per_model @ arrays.access[:-1]
    total = per_model.sum()
    return np.where(usable > 0, total / np.maximum(usable, 1.0), 1.0)


def host_scarcity_weights(arrays: WorkloadArrays, state: ClusterState) -> FloatArray:
    """Per type: the cluster's GPUs ÷ the GPUs on nodes that could host one task of the
    type when empty (model admitted, at least its GPU count, at least its CPU).

    `scarcity_weights` with every constraint a node's capacity sets, not only the model:
    an 8-GPU task asking 120 cores can use a 96-core node's GPUs no more than a T4-only
    task a V100's. 1 for CPU-only types and for a type no node can host."""
    hosts = (
        arrays.access[state.model_idx]
        & (state.cpu_cap[:, None] >= arrays.cpu[None, :])
        & (state.gpu_count[:, None] >= arrays.num[None, :])
    )
    usable = (state.gpu_count[:, None] * hosts).sum(axis=0).astype(np.float64)
    total = float(state.gpu_count.sum())
    scarce = arrays.uses_gpu & (usable > 0)
    return np.where(scarce, total / np.maximum(usable, 1.0), 1.0)


def categories(state: ClusterState, workload: TargetWorkload) -> IntArray:
    """`Category` of every (node, task type) pair, for reports and tests."""
    arrays = WorkloadArrays(workload, state.gpu_models)
    terms = node_terms(arrays, state.cpu_free, state.gpu_free, state.model_idx)
    cpu_ok = state.cpu_free[:, None] >= arrays.cpu[None, :]
    gpu_ok = terms.fit >= arrays.num[None, :]
    access = arrays.access[state.model_idx]
    quadrant = np.where(
        gpu_ok,
        np.where(cpu_ok, Category.Q3_SATISFIED, Category.Q4_LACK_CPU),
        np.where(cpu_ok, Category.Q2_LACK_GPU, Category.Q1_LACK_BOTH),
    )
    gpu_task = np.where(access, quadrant, Category.NO_ACCESS)
    cpu_task = np.where(cpu_ok, Category.XL_SATISFIED, Category.XR_LACK_CPU)
    return np.where(arrays.uses_gpu[None, :], gpu_task, cpu_task).astype(np.int64)


def node_fragmentation(state: ClusterState, workload: TargetWorkload) -> FloatArray:
    """F_n(M) in milli-GPU for every node (uncached; see `NodeFragmentation`)."""
    arrays = WorkloadArrays(workload, state.gpu_models)
    terms = node_terms(arrays, state.cpu_free, state.gpu_free, state.model_idx)
    return terms.amount @ arrays.prob


class NodeFragmentation:
    """Each node's fragmentation terms for one target workload, kept up to date cheaply.

    `sync(state)` finds the nodes whose free CPU or GPU differ from the copy taken last
    time and recomputes only those. On the state object it synced last (a policy's
    scratch, reused pass after pass) it compares `ClusterState.version` stamps, which
    change with every allocation and release and are copied with the resources; on any
    other state it compares the resources themselves. Every node recomputed gets a
    fresh `stamp`, so caches built on top of this one know which of their rows are stale.

    `placement_deltas` weights type m by p_m, or by p_m · `scarcity_weights` when
    `scarcity` is set (`host_scarcity_weights` with `by_hosts`); `node_values` and
    `cluster_amount` are always the paper's measure.

    The terms depend on the workload's task types, not on their probabilities, so
    `reweight` takes another workload (a live one, whose shares move with every
    arrival, whose order moves when two shares cross and whose last types come and go
    at the coverage cut-off) without recomputing any node: it keeps a column per task
    type seen (at most `SPARE_TYPES` beyond the workload's), computes a new type's
    column once, and weighs only the workload's columns; `order[j]` is the column of
    the workload's type j. `weights_version` counts reweights, `columns_version` added
    columns.
    """

    def __init__(
        self, workload: TargetWorkload, scarcity: bool = False, by_hosts: bool = False
    ) -> None:
        self.workload = workload
        self.scarcity = scarcity
        self.by_hosts = by_hosts
        """With `scarcity`: weigh by `host_scarcity_weights`, not `scarcity_weights`."""
        self.weights_version = 0
        self.columns_version = 0
        self._types = list(workload.types)  # one per column (their probabilities unused)
        self._columns = {type_key(t): j for j, t in enumerate(self._types)}
        self.order: IntArray = np.arange(len(self._types))
        self._nodes: tuple[object, ...] | None = None

    def _reset(self, state: ClusterState) -> None:
        self._nodes = state.nodes
        self._cluster = state  # only its fixed parts (GPU models and counts) are read
        self._lay_out_columns()
        self.model_idx = state.model_idx.copy()
        self.cpu_seen = state.cpu_free.copy()
        self.gpu_seen = state.gpu_free.copy()
        self._synced = state
        self.version_seen = state.version.copy()
        self.terms = node_terms(self.arrays, self.cpu_seen, self.gpu_seen, self.model_idx)
        self.type_totals = self.terms.amount.sum(axis=0)
        self.stamp = np.zeros(state.num_nodes, dtype=np.int64)
        self._clock = 0

    def _lay_out_columns(self) -> None:
        state = self._cluster
        self.arrays = WorkloadArrays.of_types(self._types, state.gpu_models)
        weights = host_scarcity_weights if self.by_hosts else scarcity_weights
        self._scarcity = weights(self.arrays, state) if self.scarcity else None
        self._weigh_types()

    def _weigh_types(self) -> None:
        """Probabilities and Δ weights per column, from the current workload (0 for a
        column of a type it does not hold)."""
        prob = np.zeros(len(self._types))
        prob[self.order] = [t.probability for t in self.workload.types]
        self.arrays.prob = prob
        scarcity = self._scarcity
        self.delta_weights = prob * (scarcity if scarcity is not None else 1.0)

    def reweight(self, workload: TargetWorkload) -> bool:
        """Use `workload` from now on: only the weights change, and a column is added for
        each type never seen before. False, changing nothing, when that would keep more
        than `SPARE_TYPES` columns the workload does not use (or types repeat)."""
        keys = [type_key(t) for t in workload.types]
        new = {key: t for key, t in zip(keys, workload.types, strict=True)}
        for key in self._columns:
            new.pop(key, None)
        if len(set(keys)) != len(keys) or len(self._columns) != len(self._types):
            return False
        if len(self._types) + len(new) > len(keys) + SPARE_TYPES:
            return False
        if new:
            self._add_columns(list(new.values()))
        self.workload = workload
        self.order = np.array([self._columns[key] for key in keys], dtype=np.int64)
        self.weights_version += 1
        if self._nodes is not None:
            self._weigh_types()
        return True

    def _add_columns(self, types: list[TaskType]) -> None:
        for task_type in types:
            self._columns[type_key(task_type)] = len(self._types)
            self._types.append(task_type)
        self.columns_version += 1
        if self._nodes is None:
            return
        self._lay_out_columns()
        extra = WorkloadArrays.of_types(types, self._cluster.gpu_models)
        fresh = node_terms(extra, self.cpu_seen, self.gpu_seen, self.model_idx)
        terms = self.terms
        self.terms = NodeTerms(
            np.hstack((terms.small, fresh.small)),
            np.hstack((terms.fit, fresh.fit)),
            np.hstack((terms.amount, fresh.amount)),
            terms.idle,
        )
        self.type_totals = np.concatenate((self.type_totals, fresh.amount.sum(axis=0)))

    def sync(self, state: ClusterState) -> None:
        """Bring the cached terms in line with `state` (same node list as before, or a
        new cluster, which resets the cache)."""
        if state.nodes is not self._nodes:
            self._reset(state)
            return
        if state is self._synced:
            changed = np.flatnonzero(self.version_seen != state.version)
        else:
            changed = np.flatnonzero(
                (self.cpu_seen != state.cpu_free) | (self.gpu_seen != state.gpu_free).any(axis=1)
            )
            self._synced = state
            self.version_seen = state.version.copy()
        if changed.size:
            self._recompute(state, changed)

    def sync_nodes(self, state: ClusterState, nodes: IntArray) -> None:
        """Bring only `nodes` in line with `state`, for a reader of a few nodes' terms
        (FGD's candidates, its tied nodes): O(len(nodes)), where `sync` compares every
        node's stamp (12,500 a task at scale). The others keep their terms, and their
        old stamps say so, until asked for or `sync`ed; `type_totals` stays the sum of
        the terms held. Another state object than the one synced last costs one `sync`."""
        if state.nodes is not self._nodes or state is not self._synced:
            self.sync(state)
            return
        changed = nodes[self.version_seen[nodes] != state.version[nodes]]
        if changed.size:
            self._recompute(state, changed)

    def _recompute(self, state: ClusterState, nodes: IntArray) -> None:
        cpu = state.cpu_free[nodes]
        gpu = state.gpu_free[nodes]
        fresh = node_terms(self.arrays, cpu, gpu, self.model_idx[nodes])
        self.type_totals += fresh.amount.sum(axis=0) - self.terms.amount[nodes].sum(axis=0)
        self.terms.small[nodes] = fresh.small
        self.terms.fit[nodes] = fresh.fit
        self.terms.amount[nodes] = fresh.amount
        self.terms.idle[nodes] = fresh.idle
        self.cpu_seen[nodes] = cpu
        self.gpu_seen[nodes] = gpu
        self.version_seen[nodes] = state.version[nodes]
        self._clock += 1
        self.stamp[nodes] = self._clock

    def node_values(self) -> FloatArray:
        """F_n(M) per node, milli-GPU."""
        return self.terms.amount[:, self.order] @ self.arrays.prob[self.order]  # its order

    def cluster_amount(self) -> float:
        """F(M) = Σ_n F_n(M), milli-GPU."""
        return float(self.type_totals[self.order] @ self.arrays.prob[self.order])

    def idle_milli(self) -> int:
        return int(self.terms.idle.sum())

    def placement_deltas(
        self, state: ClusterState, task: TaskRequest, nodes: IntArray
    ) -> FloatArray:
        """Change in F_n(M) (types weighted by `delta_weights`) if one `task` went to each
        of `nodes` (after `sync(state)`).

        A sharing task gets one column per GPU slot (inf where the GPU lacks room): it
        may go on any GPU with enough free. Any other task gets one column: whole-GPU
        tasks take fully free GPUs, and which ones does not change the measure.

        On a node that cannot share GPUs (`ClusterState.whole_only`) a sharing task
        takes a whole GPU, as `ClusterState.allocate` does, and the part it leaves unused
        is lost to every GPU type as surely as a fragment: Δ there is the measure's
        change for a whole GPU taken plus that part, for each type that uses GPUs. So a
        sharing node where the rest of the GPU stays usable is preferred to a whole one.
        """
        return self.weigh(*self.placement_diffs(state, task, nodes))

    def placement_diffs(
        self, state: ClusterState, task: TaskRequest, nodes: IntArray
    ) -> tuple[FloatArray, BoolArray]:
        """`placement_deltas` before weighting: per type column, node and slot (axes in
        that order) the change in fragmented milli-GPU (integers, held as floats), and which
        slots fit the task. They depend on the node's free resources and the types, not
        on the types' probabilities."""
        types = self.arrays.prob.size
        if task.is_sharing:
            free = state.gpu_free[nodes]
            rows = np.repeat(nodes, free.shape[1])
            before = free.reshape(-1)
            fits = before >= task.gpu_milli
            diffs = np.zeros((types, before.size))
            shared = fits & state.shares_gpus[rows] if state.whole_only else fits
            diffs[:, shared] = self._diffs(state, task, rows[shared], before[shared], 1)
            if state.whole_only:
                whole = fits & ~shared
                diffs[:, whole] = self._whole_gpu_diffs(state, task, rows[whole], before[whole])
            return diffs.reshape(types, *free.shape), fits.reshape(free.shape)
        full = np.full(nodes.size, MILLI if task.num_gpus else 0, dtype=np.int64)
        diffs = self._diffs(state, task, nodes, full, task.num_gpus)[:, :, None]
        return diffs, np.ones((nodes.size, 1), dtype=bool)

    def _whole_gpu_diffs(
        self, state: ClusterState, task: TaskRequest, nodes: IntArray, gpu_before: IntArray
    ) -> FloatArray:
        """`_diffs` of a sharing task on GPUs it takes whole (nodes that cannot share),
        plus the milli-GPU it leaves unused for each type that uses GPUs."""
        whole = self._diffs(state, replace(task, gpu_milli=MILLI), nodes, gpu_before, 1)
        return whole + (MILLI - task.gpu_milli) * self.arrays.uses_gpu[:, None]

    def weigh(self, diffs: FloatArray, fits: BoolArray) -> FloatArray:
        """Δ per node and slot from `placement_diffs` (inf where the slot does not fit).

        Summed type by type in the workload's order, so a slot's Δ is the same float
        whatever else is weighed with it and however the columns are kept (a BLAS
        matrix-vector product's rounding can follow the rows' memory alignment: seen
        as one-ulp differences)."""
        weights = self.delta_weights
        first, *rest = self.order.tolist()
        deltas: FloatArray = diffs[first] * weights[first]
        term = np.empty_like(deltas)
        for column in rest:
            deltas += np.multiply(diffs[column], weights[column], out=term)
        deltas[~fits] = np.inf
        return deltas

    def _diffs(
        self,
        state: ClusterState,
        task: TaskRequest,
        nodes: IntArray,
        gpu_before: IntArray,
        gpus_taken: int,
    ) -> FloatArray:
        """Per type (rows), the change in fragmented milli-GPU for `task` taking
        `task.gpu_milli` from `gpus_taken` GPUs per node, each with `gpu_before` free.
        Integer per-type differences keep an unchanged node's Δ exactly 0."""
        arrays = self.arrays
        want = arrays.milli[None, :]
        after = (gpu_before - task.gpu_milli)[:, None]
        before = gpu_before[:, None]
        small = self.terms.small[nodes] + gpus_taken * (
            after * (after < want) - before * (before < want)
        )
        fit = self.terms.fit[nodes] + gpus_taken * (
            (after >= want).astype(np.int64) - (before >= want)
        )
        idle = self.terms.idle[nodes] - gpus_taken * task.gpu_milli
        cpu = state.cpu_free[nodes] - task.cpu_milli
        runnable = _runnable(arrays, cpu, fit, self.model_idx[nodes])
        amount = np.where(runnable, small, idle[:, None])
        return np.array((amount - self.terms.amount[nodes]).T, dtype=np.float64, order="C")


def cluster_fragmentation(state: ClusterState, workload: TargetWorkload) -> tuple[float, float]:
    """(amount, ratio): F(M) as % of GPU capacity and as % of idle GPU."""
    values = node_fragmentation(state, workload)
    amount = float(values.sum())
    capacity = state.total_gpus * MILLI
    idle = float(state.gpu_free.sum())
    return (
        100.0 * amount / capacity if capacity else 0.0,
        100.0 * amount / idle if idle else 0.0,
    )
