"""Best-fit: the node left with the least weighted CPU and GPU after the task lands.

The artifact's integer score, raw = int(100 · (1 − [0.5·(cpuLeft − cpu)/128000 +
0.5·(gpuLeft − gpu)/8000])), is reproduced exactly, because its truncation creates the
ties that the first-name rule then breaks. (Its min-max normalisation keeps the order
and the set of top-scoring nodes, so it is left out.)
"""

from __future__ import annotations

import numpy as np

from policies.base import Context, PlacementPolicy
from policies.cluster import ClusterState
from policies.jobs import JobSpec, Placement, TaskRequest
from policies.placement import feasible_kind_leaders

MAX_SPEC_CPU = 128_000.0
MAX_SPEC_GPU = 8_000.0


class BestFit(PlacementPolicy):
    name = "bestfit"

    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        cpu_left = (state.cpu_free[candidates] - task.cpu_milli).astype(np.float64)
        gpu_left = (state.gpu_free_sum[candidates] - task.gpu_total_milli).astype(np.float64)
        leftover = cpu_left / MAX_SPEC_CPU * 0.5 + gpu_left / MAX_SPEC_GPU * 0.5
        return np.trunc((1.0 - leftover) * 100.0)

    def candidates(self, spec: JobSpec, task: TaskRequest, state: ClusterState) -> np.ndarray:
        """The score reads only a node's free resources: one free node of a kind will do."""
        return feasible_kind_leaders(spec, task, state)

    def explain(self, spec: JobSpec, placement: Placement) -> str:
        return f"bestfit: {placement.tasks[0].node} leaves the least CPU and GPU idle"
