"""FIFO first-fit: jobs in arrival order, each on the first node (by name) that fits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.base import Context, PlacementConfig, PlacementPolicy
from policies.cluster import ClusterState
from policies.jobs import JobSpec, TaskRequest
from policies.placement import first_fit


@dataclass(frozen=True)
class FifoConfig(PlacementConfig):
    blocking: bool = field(
        default=True,
        metadata={"help": "strict FIFO: a job that does not fit blocks the ones behind it"},
    )


class FifoFirstFit(PlacementPolicy):
    name = "fifo"
    config_type = FifoConfig

    def score(
        self,
        spec: JobSpec,
        task: TaskRequest,
        state: ClusterState,
        candidates: np.ndarray,
        ctx: Context,
    ) -> np.ndarray:
        return -candidates.astype(np.float64)

    def pick_node(
        self, spec: JobSpec, task: TaskRequest, state: ClusterState, ctx: Context
    ) -> int | None:
        """The first feasible node, which `score` ranks first, found without scoring."""
        return first_fit(spec, task, state)

    def explain(self, spec: JobSpec, placement: object) -> str:
        return "fifo: first node that fits"
