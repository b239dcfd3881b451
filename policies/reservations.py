"""Where a stream's inference share is held: one GPU, the tightest fit on the GPU model
slowest for retraining first (where serving displaces least), else whatever the roomiest
GPU has. Both hosts reserve through `reserve_gpu`: the simulator on its cluster state, the
controller on its ledger (`controller.scheduling.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.cluster import ClusterState


def reserve_gpu(
    cluster: ClusterState, model_order: Sequence[int], milli: int
) -> tuple[int, int, int] | None:
    """(node, GPU, milli-GPU granted) for a share of `milli`: the tightest GPU that fits
    it, on the first model in `model_order` that has one; else the roomiest GPU and what
    it has free. None when nothing is free or nothing is asked."""
    if milli <= 0:
        return None
    for model in model_order:
        nodes = np.flatnonzero(cluster.model_idx == model)
        free = cluster.gpu_free[nodes]
        fits = np.where(free >= milli, free, np.iinfo(np.int64).max)
        if nodes.size and (fits < np.iinfo(np.int64).max).any():
            row, gpu = divmod(int(np.argmin(fits)), free.shape[1])
            return int(nodes[row]), gpu, milli
    node, gpu = divmod(int(np.argmax(cluster.gpu_free)), cluster.gpu_free.shape[1])
    room = int(cluster.gpu_free[node, gpu])
    return (node, gpu, room) if room > 0 else None
