"""GPU Clustering: co-locate tasks of the same GPU class (sharing, or k whole GPUs),
preferring fuller nodes. Integer bands, each plus 25·(8000 − idle milli)/8000:
75 node hosts only this class; 50 this class among others; 25 no GPU pods; 0 only other
classes. CPU-only tasks score 0 everywhere."""

from __future__ import annotations

import numpy as np

from policies.base import Context, PlacementPolicy
from policies.best_fit import MAX_SPEC_GPU
from policies.cluster import ClusterState, task_class
from policies.jobs import JobSpec, Placement, TaskRequest


class GpuClustering(PlacementPolicy):
    name = "clustering"

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
        classes = state.pods_by_class[candidates] > 0
        hosts_own = classes[:, task_class(task.num_gpus, task.gpu_milli)]
        n_classes = classes.sum(axis=1)
        band = np.where(
            hosts_own,
            np.where(n_classes == 1, 75, 50),
            np.where(n_classes == 0, 25, 0),
        )
        idle = state.gpu_free[candidates].sum(axis=1)
        fullness = _go_div(25 * (int(MAX_SPEC_GPU) - idle), int(MAX_SPEC_GPU))
        return (fullness + band).astype(np.float64)

    def explain(self, spec: JobSpec, placement: Placement) -> str:
        return f"clustering: {placement.tasks[0].node} hosts tasks of the same GPU class"


def _go_div(a: np.ndarray, b: int) -> np.ndarray:
    """Integer division truncating toward zero, as Go's int64 `/` does."""
    return np.sign(a) * (np.abs(a) // b)
