"""Dot-product (Tetris): prefer the node whose residual vector is least aligned with the
task's demand, with both normalised by the largest node shape (128 cores, 8 GPUs)."""

from __future__ import annotations

import numpy as np

from policies.base import Context, PlacementPolicy
from policies.best_fit import MAX_SPEC_CPU, MAX_SPEC_GPU
from policies.cluster import ClusterState
from policies.jobs import JobSpec, Placement, TaskRequest


class DotProduct(PlacementPolicy):
    name = "dotprod"

    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        cpu_left = state.cpu_free[candidates] / MAX_SPEC_CPU
        gpu_left = state.gpu_free[candidates].sum(axis=1) / MAX_SPEC_GPU
        dot = cpu_left * (task.cpu_milli / MAX_SPEC_CPU) + gpu_left * (
            task.gpu_total_milli / MAX_SPEC_GPU
        )
        return np.trunc(100.0 * (1.0 - dot / 2.0))

    def explain(self, spec: JobSpec, placement: Placement) -> str:
        return f"dotprod: {placement.tasks[0].node} has the smallest residual·demand product"
