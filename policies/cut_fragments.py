"""FGD's second tie rule: the fragments of the task types M's coverage cut leaves out.

The measure weighs only M, the most popular types covering 95% of tasks (the artifact's
typical pods), so the score cannot see a rare type whose tasks fit few nodes: on openb's
multigpu40, 34 eight-GPU tasks asking 120 cores fit only the 39 128-core nodes, and
a 1-GPU task scores alike on an empty 128-core node and an empty 96-core one. Among
nodes of equal score, FGD's default already looks further than the next task (the
CPU-starved GPU S, `policies.cpu_starvation`); this adds, in the same milli-GPU, the
change of the paper's F_n over the cut types R,

    ΔF_n(R) = Σ_{m ∈ R} s_m · (C / C_m) · ΔF_n(m),

with s_m the type's share of all tasks and C/C_m its host scarcity: the cluster's GPUs
over the GPUs on nodes that could host it at all (`host_scarcity_weights`). A rare type
only the scarce nodes can host weighs in proportion to how few they are; a rare 1-GPU
type that fits anywhere weighs its share alone. The score, and so which nodes tie, is
the measure's over M as before (docs/fgd.md §3, correction 13).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from policies.cluster import ClusterState, IntArray
from policies.fragmentation import FloatArray, NodeFragmentation
from policies.jobs import TaskRequest
from policies.target_workload import TargetWorkload, TaskType


class CutFragments:
    """ΔF_n(R) for the cut types of the workloads FGD is given (`use`), kept per task
    shape and node until the node changes or the weights do. Unlike Δ's cache it keeps
    the weighted values only, not each type's differences: the cut types outnumber M's
    (179 against 101 on gpuspec20), and per-type differences of every shape held
    ~0.6 GB more on the openb traces."""

    def __init__(self, shapes: int) -> None:
        self.shapes = shapes
        self.share = 0.0
        """Of all tasks, the share the cut types make up (0: none, the rule is off)."""
        self._source: TargetWorkload | None = None
        self._fragmentation: NodeFragmentation | None = None
        self._entries: OrderedDict[tuple[int, int, int], _Entry] = OrderedDict()

    def use(self, workload: TargetWorkload) -> None:
        """Weigh the cut types of `workload` from now on (the same object: nothing to do;
        other shares: the node terms are kept, `NodeFragmentation.reweight`)."""
        if workload is self._source:
            return
        self._source = workload
        cut = workload.cut
        self.share = sum(t.probability for t in cut)
        if not cut:
            return
        types = tuple(TaskType(t.task, t.allowed_models, t.probability / self.share) for t in cut)
        current = self._fragmentation
        if current is not None and current.workload.types == types:
            return  # only their share of all tasks moved: the kept values still hold
        shares = TargetWorkload(types)
        if current is not None and current.reweight(shares):
            return
        self._fragmentation = NodeFragmentation(shares, scarcity=True, by_hosts=True)
        self._entries.clear()

    def change(self, task: TaskRequest, state: ClusterState, nodes: IntArray) -> FloatArray:
        """ΔF_n(R) on each of `nodes`, in milli-GPU: its least over the node's GPUs
        with room for a sharing task."""
        fragmentation = self._fragmentation
        assert fragmentation is not None and self.share > 0
        fragmentation.sync_nodes(state, nodes)
        entry = self._entry(task, state, fragmentation)
        stale = nodes[entry.stamp[nodes] != fragmentation.stamp[nodes]]
        if stale.size:
            entry.deltas[stale] = fragmentation.placement_deltas(state, task, stale)
            entry.stamp[stale] = fragmentation.stamp[stale]
        return self.share * entry.deltas[nodes].min(axis=1)

    def _entry(
        self, task: TaskRequest, state: ClusterState, fragmentation: NodeFragmentation
    ) -> _Entry:
        key = (task.cpu_milli, task.num_gpus, task.gpu_milli)
        weights = (state.nodes, fragmentation.weights_version, fragmentation.columns_version)
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry.weights[0] is weights[0]
            and entry.weights[1:] == weights[1:]
        ):
            self._entries.move_to_end(key)
            return entry
        width = state.gpu_free.shape[1] if task.is_sharing else 1
        entry = _Entry(
            np.full((state.num_nodes, width), np.inf),
            np.full(state.num_nodes, -1, dtype=np.int64),
            weights,
        )
        if self.shapes:  # 0: nothing kept, every call computes afresh
            self._entries[key] = entry
            self._entries.move_to_end(key)
            if len(self._entries) > self.shapes:
                self._entries.popitem(last=False)
        return entry


@dataclass(slots=True)
class _Entry:
    deltas: FloatArray
    """Per node and slot, ΔF_n(R) of the shape, weighted as of `weights`."""
    stamp: IntArray
    """Per node, the `NodeFragmentation.stamp` its row was computed at (-1: none)."""
    weights: tuple[object, int, int]
    """The cluster's nodes and the measure's weights and columns versions."""
