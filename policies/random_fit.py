"""Random-fit: a feasible node uniformly at random, and a random GPU among those that fit
(the FGD artifact's `RandomScore` with gpusel=random)."""

from __future__ import annotations

import numpy as np

from policies.base import Context, PlacementPolicy
from policies.cluster import MILLI, ClusterState
from policies.jobs import JobSpec, Placement, TaskRequest
from policies.placement import select_gpus


class RandomFit(PlacementPolicy):
    name = "random"

    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        scores = np.zeros(candidates.size)
        scores[ctx.rng.integers(candidates.size)] = 1.0
        return scores

    def choose_gpus(
        self, task: TaskRequest, state: ClusterState, node: int, ctx: Context
    ) -> tuple[int, ...]:
        if not task.is_sharing:
            return select_gpus(task, state.gpu_free[node], state.gpu_count[node])
        free = state.gpu_free[node, : state.gpu_count[node]]
        fits = np.flatnonzero(free >= min(task.gpu_milli, MILLI))
        return (int(fits[ctx.rng.integers(fits.size)]),)

    def explain(self, spec: JobSpec, placement: Placement) -> str:
        return f"random: drew {placement.tasks[0].node} among feasible nodes"
