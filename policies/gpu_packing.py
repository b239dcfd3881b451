"""GPU Packing, in three integer tiers (high to low):

1. the task fits on already partly used GPUs: max(100 − Σ free%/10, 50);
2. the node is partly used but the task needs fully free GPUs: max(50 − #free GPUs used, 33);
3. every GPU on the node is free: max(33 − n, n) for an n-GPU node (the artifact's max).

CPU-only tasks score 0 everywhere, so they go to the first node that fits.
"""

from __future__ import annotations

import numpy as np

from policies.base import Context, PlacementPolicy
from policies.cluster import MILLI, ClusterState
from policies.jobs import JobSpec, Placement, TaskRequest


class GpuPacking(PlacementPolicy):
    name = "packing"

    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        if not task.num_gpus:
            return np.zeros(candidates.size)
        free = state.gpu_free[candidates]
        count = state.gpu_count[candidates]
        fully_free = (free == MILLI).sum(axis=1)
        if task.is_sharing:
            # The artifact takes the tightest GPU that fits (ascending free milli).
            tightest = np.where(free >= task.gpu_milli, free, MILLI + 1).min(axis=1)
            uses_fresh = tightest == MILLI
            shared = np.maximum(100 - (tightest * 100 // MILLI) // 10, 50)
            scores = np.where(uses_fresh, max(50 - 1, 33), shared)
        else:
            scores = np.full(candidates.size, max(50 - task.num_gpus, 33))
        idle_node = np.maximum(33 - fully_free, fully_free)
        return np.where(fully_free == count, idle_node, scores).astype(np.float64)

    def explain(self, spec: JobSpec, placement: Placement) -> str:
        return f"packing: {placement.tasks[0].node} is the most packed node that fits"
