"""FGD's per-shape cache of Δ: the per-type differences of a task shape on each node,
refreshed only for nodes that changed, and weighed once per workload version."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from policies.cluster import ClusterState, IntArray
from policies.fragmentation import BoolArray, FloatArray, NodeFragmentation
from policies.jobs import TaskRequest


class DeltaCache:
    """Per task shape, Δ of the nodes asked for, recomputed only where it may have changed.

    Δ depends only on the node's free resources, the task's (CPU, GPU count, milli) and
    the workload; the per-type differences it is weighted from (`placement_diffs`) do
    not depend on the workload's probabilities. So between two tasks of one shape only
    the nodes placed on in between need new differences, and a live workload's new
    probabilities (every pass) cost a new weighting (`NodeFragmentation.weigh`) of the
    nodes asked for, each row once per workload: rows carry the stamp their differences
    were taken at and the weights version they were weighed with.
    """

    def __init__(self, fragmentation: NodeFragmentation, shapes: int) -> None:
        self.fragmentation = fragmentation
        self.shapes = shapes
        self._entries: OrderedDict[tuple[int, int, int], _Entry] = OrderedDict()
        self._nodes: tuple[object, ...] | None = None
        self._columns_version = fragmentation.columns_version

    def get(self, task: TaskRequest, state: ClusterState, candidates: IntArray) -> FloatArray:
        fragmentation = self.fragmentation
        fragmentation.sync_nodes(state, candidates)
        if state.nodes is not self._nodes or self._columns_version != fragmentation.columns_version:
            self._entries.clear()  # another cluster, or differences lack a new type's column
            self._nodes = state.nodes
            self._columns_version = fragmentation.columns_version
        entry = self._entry(task, state)
        changed = entry.stamp[candidates] != fragmentation.stamp[candidates]
        if changed.any():
            stale = candidates[changed]
            diffs, fits = fragmentation.placement_diffs(state, task, stale)
            entry.diffs[:, stale] = diffs
            entry.fits[stale] = fits
            entry.stamp[stale] = fragmentation.stamp[stale]
        version = fragmentation.weights_version
        unweighed = changed | (entry.weighed[candidates] != version)
        if unweighed.all() and candidates.size == state.num_nodes:
            entry.deltas = fragmentation.weigh(entry.diffs, entry.fits)  # no gather
            entry.weighed[:] = version
        elif unweighed.any():
            rows = candidates[unweighed]
            entry.deltas[rows] = fragmentation.weigh(entry.diffs[:, rows], entry.fits[rows])
            entry.weighed[rows] = version
        return entry.deltas[candidates]

    def _entry(self, task: TaskRequest, state: ClusterState) -> _Entry:
        key = (task.cpu_milli, task.num_gpus, task.gpu_milli)
        entry = self._entries.get(key)
        if entry is None:
            width = state.gpu_free.shape[1] if task.is_sharing else 1
            types = self.fragmentation.delta_weights.size
            entry = _Entry(
                diffs=np.zeros((types, state.num_nodes, width)),
                fits=np.zeros((state.num_nodes, width), dtype=bool),
                deltas=np.full((state.num_nodes, width), np.inf),
                stamp=np.full(state.num_nodes, -1, dtype=np.int64),
                weighed=np.full(state.num_nodes, -1, dtype=np.int64),
            )
            self._entries[key] = entry
            if len(self._entries) > self.shapes:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry


@dataclass(slots=True)
class _Entry:
    diffs: FloatArray
    """Per type, node and slot: the change in fragmented milli-GPU."""
    fits: BoolArray
    deltas: FloatArray
    """Per node, `diffs` weighted by the workload of the node's `weighed` version."""
    stamp: IntArray
    """Per node, the `NodeFragmentation.stamp` its differences were taken at."""
    weighed: IntArray
    """Per node, the `NodeFragmentation.weights_version` of its `deltas` (-1: none)."""
