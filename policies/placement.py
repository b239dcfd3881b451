"""Vectorised feasibility and GPU choice shared by every placement policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from policies.cluster import MILLI, ClusterState, IntArray

if TYPE_CHECKING:
    from policies.jobs import JobSpec, TaskRequest


def feasible_mask(spec: JobSpec, task: TaskRequest, state: ClusterState) -> np.ndarray:
    """Nodes where one task of `spec` fits now: CPU, memory, enough GPUs with
    `gpu_milli` free each, an allowed GPU model, node selector and taints."""
    ok = (state.cpu_free >= task.cpu_milli) & (state.mem_free >= task.mem_mib)
    if task.num_gpus:
        fitting = (state.gpu_free >= task.gpu_milli).sum(axis=1)
        ok &= fitting >= task.num_gpus
        if spec.allowed_models is not None:
            ok &= model_mask(spec.allowed_models, state)
    if spec.node_selector or state.has_taints:
        ok &= label_mask(spec, state)
    return ok


def feasible_nodes(spec: JobSpec, task: TaskRequest, state: ClusterState) -> IntArray:
    """Indices of the nodes in `feasible_mask`, ascending."""
    return np.flatnonzero(feasible_mask(spec, task, state))


def model_mask(allowed: frozenset[str], state: ClusterState) -> np.ndarray:
    wanted = [i for i, m in enumerate(state.gpu_models) if m in allowed]
    return np.isin(state.model_idx, wanted)


def label_mask(spec: JobSpec, state: ClusterState) -> np.ndarray:
    """Node selector and taint/toleration check; cached per cluster (labels and taints
    do not change while a cluster state lives)."""
    key = (tuple(sorted(spec.node_selector.items())), spec.tolerations)
    cached = state.label_cache.get(key)
    if cached is None:
        cached = np.array(
            [
                all(node.labels.get(k) == v for k, v in spec.node_selector.items())
                and all(
                    any(t.tolerates(taint) for t in spec.tolerations)
                    for taint in node.taints
                    if taint.effect in ("NoSchedule", "NoExecute")
                )
                for node in state.nodes
            ],
            dtype=bool,
        )
        state.label_cache[key] = cached
    return cached


def select_gpus(task: TaskRequest, free: IntArray, count: int | np.integer) -> tuple[int, ...]:
    """GPU indices for one task on a node with per-GPU `free` milli.

    Whole GPUs: the lowest-index fully free GPUs. Sharing: the tightest GPU that fits
    (least free milli, lowest index on ties), which packs partial GPUs first.
    """
    if not task.num_gpus:
        return ()
    free = free[: int(count)]
    if task.gpu_milli >= MILLI:
        whole = np.flatnonzero(free == MILLI)[: task.num_gpus]
        return tuple(int(g) for g in whole)
    fits = np.flatnonzero(free >= task.gpu_milli)
    best = fits[np.argmin(free[fits])]  # argmin returns the first minimum
    return (int(best),)


def residual_after(
    task: TaskRequest, state: ClusterState, nodes: IntArray
) -> tuple[IntArray, IntArray]:
    """(CPU left, total GPU milli left) on `nodes` after one task of `task` lands there."""
    cpu_left = state.cpu_free[nodes] - task.cpu_milli
    gpu_left = state.gpu_free[nodes].sum(axis=1) - task.gpu_total_milli
    return cpu_left, gpu_left
