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

from policies.cluster import ClusterState, IntArray
from policies.delta_cache import DeltaCache
from policies.fragmentation import FloatArray, NodeFragmentation
from policies.jobs import TaskRequest
from policies.target_workload import TargetWorkload, TaskType


class CutFragments:
    """ΔF_n(R) for the cut types of the workloads FGD is given (`use`), cached per task
    shape and node as Δ is (`DeltaCache`)."""

    def __init__(self, shapes: int) -> None:
        self.shapes = shapes
        self.share = 0.0
        """Of all tasks, the share the cut types make up (0: none, the rule is off)."""
        self._source: TargetWorkload | None = None
        self._fragmentation: NodeFragmentation | None = None
        self._deltas: DeltaCache | None = None

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
        shares = TargetWorkload(types)
        current = self._fragmentation
        if current is not None and current.reweight(shares):
            return
        self._fragmentation = NodeFragmentation(shares, scarcity=True, by_hosts=True)
        self._deltas = DeltaCache(self._fragmentation, self.shapes)

    def change(self, task: TaskRequest, state: ClusterState, nodes: IntArray) -> FloatArray:
        """ΔF_n(R) on each of `nodes`, in milli-GPU: its least over the node's GPUs
        with room for a sharing task."""
        assert self._deltas is not None and self.share > 0
        deltas = self._deltas.get(task, state, nodes)
        return self.share * deltas.min(axis=1)
