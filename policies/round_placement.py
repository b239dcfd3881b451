"""From a round policy's allocation to placements: the per-job target (GPU model, GPUs
per node) a Sia round chooses becomes Place, Resize and Preempt decisions that put every
task where its CPU, memory, GPUs, selector and taints fit. Also the per-model view of
the cluster and the pieces Gavel shares (held jobs, free capacity, CPU-only jobs, jobs
that fit nowhere).

Kept jobs stay put; moved and new jobs go largest first, multi-node configurations on
whole free nodes, single-node ones best-fit on one node, so no node holds two
distributed jobs. If a model is too fragmented, all its jobs are repacked (each trying
its old GPUs first); a job that still fits nowhere waits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from policies.base import Snapshot
from policies.cluster import MILLI, ClusterState, IntArray
from policies.contract import PlacementError, check_fits
from policies.decisions import (
    Decision,
    Place,
    Preempt,
    Resize,
    Unschedulable,
)
from policies.jobs import (
    JobSpec,
    JobStatus,
    JobView,
    Placement,
    TaskPlacement,
)
from policies.placement import place_on_nodes, release, take


@dataclass(frozen=True)
class ModelInfo:
    """One GPU model of the cluster: node indices, GPUs per node, total GPUs."""

    name: str
    nodes: tuple[int, ...]
    gpus_per_node: int
    total_gpus: int


def cluster_models(cluster: ClusterState) -> dict[str, ModelInfo]:
    infos = {}
    for index, model in enumerate(cluster.gpu_models):
        nodes = tuple(int(n) for n in np.flatnonzero(cluster.model_idx == index))
        counts = cluster.gpu_count[list(nodes)]
        values, freq = np.unique(counts, return_counts=True)
        infos[model] = ModelInfo(model, nodes, int(values[np.argmax(freq)]), int(counts.sum()))
    return infos


def held_jobs(snapshot: Snapshot) -> dict[str, JobView]:
    """Running jobs a round leaves where they are: those that may not be preempted, and
    CPU-only ones (they hold no GPUs)."""
    return {
        j.id: j
        for j in snapshot.running
        if j.placement is not None and (not j.spec.preemptible or not j.spec.task.num_gpus)
    }


def free_capacity(
    cluster: ClusterState, held: Iterable[JobView], models: Mapping[str, ModelInfo]
) -> dict[str, int]:
    """GPUs of each model not held by `held` jobs (a shared GPU counts once)."""
    taken = {
        (cluster.node_index[t.node], g)
        for job in held
        if job.placement is not None
        for t in job.placement.tasks
        for g in t.gpus
    }
    used = Counter(cluster.nodes[node].gpu_model for node, _ in taken)
    return {m: info.total_gpus - used[m] for m, info in models.items()}


def place_allocations(
    snapshot: Snapshot,
    wanted: Mapping[str, tuple[str, tuple[int, ...]]],
    models: Mapping[str, ModelInfo],
) -> list[Decision]:
    """Turn per-job (GPU model, GPUs per node) into decisions: preempt jobs left without
    GPUs, keep jobs whose shape is unchanged (and held jobs), place the rest (resizing
    running ones), then CPU-only jobs on what is left."""
    state = snapshot.cluster.scratch()
    decisions: list[Decision] = []
    kept: dict[str, Placement] = {}
    held = held_jobs(snapshot)
    for job in snapshot.running:
        if job.placement is None or job.id in held:
            continue
        target = wanted.get(job.id)
        if target is not None and _same_shape(job, target):
            kept[job.id] = job.placement
            continue
        release(state, job.spec, job.placement)
        if target is None:
            decisions.append(Preempt(job.id, "sia: no configuration this round"))
    views = {j.id: j for j in (*snapshot.running, *snapshot.pending)}
    moving = sorted(
        (job_id for job_id in wanted if job_id not in kept),
        key=lambda j: (-sum(wanted[j][1]), views[j].spec.submit_time, j),
    )
    placements: dict[str, Placement] = {}
    for model in models:
        todo = [j for j in moving if wanted[j][0] == model]
        if not todo:
            continue
        placed = _place_model(state, todo, wanted, views, models[model])
        if placed is None:
            placed = _repack_model(state, model, kept, wanted, views, models[model])
        placements.update(placed)
    for job_id, placement in placements.items():
        job = views[job_id]
        if job.status is JobStatus.RUNNING:
            if job.placement != placement:
                decisions.append(Resize(job_id, placement, _reason(wanted[job_id])))
        else:
            decisions.append(Place(job_id, placement, _reason(wanted[job_id])))
    for job_id in wanted:
        if job_id not in kept and job_id not in placements:
            decisions += unplaced(state, views[job_id], _reason(wanted[job_id]))
    decisions += place_cpu_only(snapshot, state, "sia")
    return decisions


def unplaced(state: ClusterState, job: JobView, target: str) -> list[Decision]:
    """A job the allocation chose but no node can take this round. A waiting job waits;
    a running one stays where it was if that is still free on `state` (taking it), else
    it stops, since the GPUs it held went to others."""
    reason = f"{target}, but no node fits it this round"
    if job.status is not JobStatus.RUNNING or job.placement is None:
        return [Unschedulable(job.id, reason, "allocation")]
    try:
        check_fits(job.spec, job.placement, state)
    except PlacementError:
        return [Preempt(job.id, reason)]
    take(state, job.spec, job.placement)
    return []


def place_cpu_only(snapshot: Snapshot, state: ClusterState, policy: str) -> list[Decision]:
    """Waiting CPU-only jobs, best fit on any node, after the GPU jobs of the round."""
    everywhere = np.arange(state.num_nodes)
    decisions: list[Decision] = []
    for job in snapshot.pending:
        if job.spec.task.num_gpus:
            continue
        placement = place_on_nodes(job.spec, state, everywhere, job.spec.replicas, spread=True)
        if placement is None:
            decisions.append(Unschedulable(job.id, f"{policy}: no node has the CPU", policy))
        else:
            decisions.append(Place(job.id, placement, f"{policy}: CPU only, best fit"))
    return decisions


def _reason(target: tuple[str, tuple[int, ...]]) -> str:
    model, per_node = target
    return f"sia: {sum(per_node)} × {model} on {len(per_node)} node(s)"


def _same_shape(job: JobView, target: tuple[str, tuple[int, ...]]) -> bool:
    shape = job.shape
    if shape is None:
        return False
    model, per_node = target
    return (
        shape.gpu_model == model
        and shape.gpu_models in ((), (model,))
        and sorted(shape.gpus_per_node) == sorted(per_node)
    )


def _place_model(
    state: ClusterState,
    todo: Sequence[str],
    wanted: Mapping[str, tuple[str, tuple[int, ...]]],
    views: Mapping[str, JobView],
    info: ModelInfo,
) -> dict[str, Placement] | None:
    """Place `todo` on `state` (mutating it) or return None, leaving `state` as it was."""
    placed: dict[str, Placement] = {}
    for job_id in todo:
        placement = _place_one(state, views[job_id], wanted[job_id][1], info)
        if placement is None:
            for done_id, done in placed.items():
                release(state, views[done_id].spec, done)
            return None
        placed[job_id] = placement
    return placed


def _repack_model(
    state: ClusterState,
    model: str,
    kept: dict[str, Placement],
    wanted: Mapping[str, tuple[str, tuple[int, ...]]],
    views: Mapping[str, JobView],
    info: ModelInfo,
) -> dict[str, Placement]:
    """Fragmentation: release every job of this model and place them all, largest first,
    each preferring its previous GPUs. Jobs that still do not fit wait."""
    for job_id in [j for j in kept if wanted[j][0] == model]:
        release(state, views[job_id].spec, kept.pop(job_id))
    todo = sorted(
        (j for j in wanted if wanted[j][0] == model and j not in kept),
        key=lambda j: (-sum(wanted[j][1]), views[j].spec.submit_time, j),
    )
    placed = {}
    for job_id in todo:
        placement = _place_one(state, views[job_id], wanted[job_id][1], info, prefer_old=True)
        if placement is not None:
            placed[job_id] = placement
    return placed


def _place_one(
    state: ClusterState,
    job: JobView,
    per_node: tuple[int, ...],
    info: ModelInfo,
    prefer_old: bool = False,
) -> Placement | None:
    """Whole free nodes for each part of a distributed job; best fit on one node
    otherwise (`place_on_nodes`), all or nothing."""
    spec = job.spec
    width = max(spec.task.num_gpus, 1)
    nodes = np.array(info.nodes, dtype=np.int64)
    old = set(_old_nodes(job, state)) if prefer_old else set()
    distributed = len(per_node) > 1
    tasks: list[TaskPlacement] = []
    for need in sorted(per_node, reverse=True):
        candidates = nodes
        if distributed or need == info.gpus_per_node:
            free = state.gpu_free[nodes] == MILLI
            candidates = nodes[free.sum(axis=1) == state.gpu_count[nodes]]
        part = _place_part(state, spec, candidates, need // width, old)
        if part is None:
            release(state, spec, Placement(tuple(tasks)))
            return None
        tasks += part.tasks
    return Placement(tuple(tasks))


def _place_part(
    state: ClusterState, spec: JobSpec, candidates: IntArray, count: int, old: set[int]
) -> Placement | None:
    """`count` tasks on one node, one of the job's previous nodes if any can take them."""
    previous = np.array([n for n in candidates.tolist() if n in old], dtype=np.int64)
    placed = place_on_nodes(spec, state, previous, count) if previous.size else None
    if placed is None:
        placed = place_on_nodes(spec, state, candidates, count)
    return placed


def _old_nodes(job: JobView, state: ClusterState) -> list[int]:
    if job.placement is None:
        return []
    return [state.node_index[t.node] for t in job.placement.tasks if t.node in state.node_index]
