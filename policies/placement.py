"""Vectorised feasibility and GPU choice shared by every placement policy, whole jobs
placed on a chosen subset of nodes for the round policies (Sia, Gavel), and the shape
both hosts give a running job's placement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from policies.cluster import MILLI, BoolArray, ClusterState, IntArray
from policies.jobs import AllocationShape, PartShape, Placement, TaskPlacement

if TYPE_CHECKING:
    from policies.jobs import JobSpec, TaskRequest


def feasible_mask(spec: JobSpec, task: TaskRequest, state: ClusterState) -> BoolArray:
    """Nodes where one task of `spec` fits now: CPU, memory, enough GPUs with
    `gpu_milli` free each, an allowed GPU model, node selector and taints."""
    ok = (state.cpu_free >= task.cpu_milli) & (state.mem_free >= task.mem_mib)
    if task.num_gpus:
        ok &= fits_gpus(task, state)
        if spec.allowed_models is not None:
            ok &= model_mask(spec.allowed_models, state)
    if spec.node_selector or state.has_taints:
        ok &= label_mask(spec, state)
    return ok


def fits_gpus(task: TaskRequest, state: ClusterState) -> BoolArray:
    """Nodes with `num_gpus` GPUs of `gpu_milli` free each, read from the per-node counts
    the state keeps (one comparison per node, not a reduction over every GPU): a task of
    whole GPUs needs that many wholly free GPUs, a share (always of one GPU) one GPU with
    that much free."""
    if task.gpu_milli == MILLI:
        return state.whole_free >= task.num_gpus
    return state.most_free >= task.gpu_milli


def feasible_nodes(spec: JobSpec, task: TaskRequest, state: ClusterState) -> IntArray:
    """Indices of the nodes in `feasible_mask`, ascending."""
    return np.flatnonzero(feasible_mask(spec, task, state))


FIRST_FIT_PROBES = 8
"""Nodes `first_fit` checks one by one before it falls back to the vectorised mask."""


def first_fit(spec: JobSpec, task: TaskRequest, state: ClusterState) -> int | None:
    """The lowest-index node of `feasible_mask`, found without computing all of it.

    The GPU, model and label tests come first, over every node (the GPU test is one
    comparison per node); CPU and memory are then checked node by node in index order
    among the nodes those tests pass, where they rarely fail (a task's CPU and memory
    mostly scale with its GPUs). After `FIRST_FIT_PROBES` misses, the rest of the mask
    is computed as `feasible_mask` does. A full mask cost six whole-cluster operations
    and an index list per task, most of a FIFO job's placement at 12,500 nodes."""
    ok = fits_gpus(task, state) if task.num_gpus else np.ones(state.num_nodes, dtype=bool)
    if task.num_gpus and spec.allowed_models is not None:
        ok &= model_mask(spec.allowed_models, state)
    if spec.node_selector or state.has_taints:
        ok &= label_mask(spec, state)
    start = 0
    for _ in range(FIRST_FIT_PROBES):
        node = _first_true(ok, start)
        if node is None:
            return None
        if state.cpu_free[node] >= task.cpu_milli and state.mem_free[node] >= task.mem_mib:
            return node
        start = node + 1
    rest = ok[start:] & (state.cpu_free[start:] >= task.cpu_milli)
    rest &= state.mem_free[start:] >= task.mem_mib
    node = _first_true(rest, 0)
    return None if node is None else start + node


def fits_empty_cluster(spec: JobSpec, empty: ClusterState) -> bool:
    """Whether `spec` could ever run on the cluster of `empty` (a state with nothing
    allocated): some node takes one of its tasks, and the nodes that do hold all of
    its GPUs. A job that fails this waits forever whatever the policy does."""
    mask = feasible_mask(spec, spec.task, empty)
    return bool(mask.any()) and spec.gpus <= int(empty.gpu_count[mask].sum())


def feasible_kind_leaders(
    spec: JobSpec, task: TaskRequest, state: ClusterState, order: IntArray | None = None
) -> IntArray:
    """`feasible_nodes` less the free nodes that a free node of the same kind earlier
    in `order` (a permutation of the nodes; default: index order) stands for, ascending.
    Free nodes of one kind are alike to a score of their resources, so for a policy
    that breaks ties by that order only the first of each kind can win: at low load
    most of the cluster is free, and scoring two nodes instead of 12,500 was most of a
    Best-fit placement."""
    mask = feasible_mask(spec, task, state)
    if state.kinds is None or not mask.any():
        return np.flatnonzero(mask)
    free = mask > state.in_use  # feasible and free
    used = np.flatnonzero(mask & state.in_use)
    if not free.any():  # a busy cluster
        return used
    if order is None:
        leaders = [i for kind in state.kinds if (i := _first_true(free & kind, 0)) is not None]
    else:
        firsts = (_first_in_order(free & kind, order) for kind in state.kinds)
        leaders = [i for i in firsts if i is not None]
    if not leaders:
        return used
    return np.sort(np.concatenate((used, np.array(leaders, dtype=np.int64))))


ORDER_PROBE = 64
"""Nodes of an order `_first_in_order` reads before it reads the rest."""


def _first_in_order(mask: BoolArray, order: IntArray) -> int | None:
    """The first node of `order` in `mask`. The order's head is read first: at moderate
    load most nodes are free, so a free node of a kind is nearly always among its first
    few (gathering the mask in the whole order cost 10 µs a kind at 12,500 nodes)."""
    if not mask.any():
        return None
    head = order[:ORDER_PROBE]
    index = _first_true(mask[head], 0)
    if index is not None:
        return int(head[index])
    rest = order[ORDER_PROBE:]
    index = _first_true(mask[rest], 0)
    return None if index is None else int(rest[index])


def _first_true(mask: BoolArray, start: int) -> int | None:
    """Index of the first True of `mask` at or after `start` (argmax stops at it)."""
    if start >= mask.size:
        return None
    index = start + int(mask[start:].argmax())
    return index if mask[index] else None


def model_mask(allowed: frozenset[str], state: ClusterState) -> BoolArray:
    """GPU nodes whose product `allowed` admits (`gpu_models.admits`: `A100` takes any
    A100, `A100-80GB` only 80 GB ones)."""
    return state.label_index.product_mask(allowed)


def label_mask(spec: JobSpec, state: ClusterState) -> BoolArray:
    """Nodes whose labels match the job's node selector and whose taints it tolerates
    (possibly a shared read-only array)."""
    if not spec.node_selector:
        return taint_mask(spec, state)
    return selector_mask(spec, state) & taint_mask(spec, state)


def selector_mask(spec: JobSpec, state: ClusterState) -> BoolArray:
    """Nodes carrying every label of the job's node selector."""
    return state.label_index.selector_mask(spec.node_selector)


def taint_mask(spec: JobSpec, state: ClusterState) -> BoolArray:
    """Nodes whose NoSchedule and NoExecute taints the job tolerates."""
    return state.label_index.taint_mask(spec.tolerations)


def select_gpus(task: TaskRequest, free: IntArray, count: int | np.integer) -> tuple[int, ...]:
    """GPU indices for one task on a node with per-GPU `free` milli.

    Whole GPUs: the lowest-index fully free GPUs. Sharing: the tightest GPU that fits
    (least free milli, lowest index on ties), which packs partial GPUs first.
    """
    if not task.num_gpus:
        return ()
    gpus = free[: int(count)].tolist()  # a few GPUs: Python beats numpy calls
    if task.gpu_milli >= MILLI:
        return tuple([g for g, f in enumerate(gpus) if f == MILLI][: task.num_gpus])
    fits = [(f, g) for g, f in enumerate(gpus) if f >= task.gpu_milli]
    return (min(fits)[1],)  # the least free, then the lowest index


def residual_after(
    task: TaskRequest, state: ClusterState, nodes: IntArray
) -> tuple[IntArray, IntArray]:
    """(CPU left, total GPU milli left) on `nodes` after one task of `task` lands there."""
    cpu_left = state.cpu_free[nodes] - task.cpu_milli
    gpu_left = state.gpu_free[nodes].sum(axis=1) - task.gpu_total_milli
    return cpu_left, gpu_left


# -- whole jobs on a subset of nodes (round policies) -------------------------------------

_UNBOUNDED = np.iinfo(np.int64).max


def capacity_mask(spec: JobSpec, task: TaskRequest, state: ClusterState) -> BoolArray:
    """Nodes that could hold one task of `spec` if nothing else ran there."""
    ok = (state.cpu_cap >= task.cpu_milli) & (state.mem_cap >= task.mem_mib)
    if task.num_gpus:
        ok &= state.gpu_count >= task.num_gpus
        if spec.allowed_models is not None:
            ok &= model_mask(spec.allowed_models, state)
    if spec.node_selector or state.has_taints:
        ok &= label_mask(spec, state)
    return ok


def task_room(spec: JobSpec, task: TaskRequest, state: ClusterState, nodes: IntArray) -> IntArray:
    """How many more tasks of `task` each of `nodes` can take now. Identical tasks use
    CPU, memory and GPUs independently, so the room is the least of the three: whole free
    GPUs for whole-GPU tasks, tasks per GPU summed for sharing ones; zero where the GPU
    model, node selector or taints rule the node out."""
    room = np.full(nodes.size, _UNBOUNDED, dtype=np.int64)
    if task.cpu_milli:
        room = np.minimum(room, state.cpu_free[nodes] // task.cpu_milli)
    if task.mem_mib:
        room = np.minimum(room, state.mem_free[nodes] // task.mem_mib)
    if task.num_gpus:
        free = state.gpu_free[nodes]
        if task.gpu_milli >= MILLI:
            gpus = (free == MILLI).sum(axis=1) // task.num_gpus
        else:
            gpus = (free // task.gpu_milli).sum(axis=1)
        room = np.minimum(room, gpus)
        if spec.allowed_models is not None:
            room[~model_mask(spec.allowed_models, state)[nodes]] = 0
    if spec.node_selector or state.has_taints:
        room[~label_mask(spec, state)[nodes]] = 0
    return room


def place_on_nodes(
    spec: JobSpec, state: ClusterState, nodes: IntArray, count: int, spread: bool = False
) -> Placement | None:
    """Place `count` tasks of `spec` on the node subset `nodes`, all or none, taking them
    from `state`. Best fit: the node with the fewest whole GPUs free, then the least free
    milli-GPU, then the lowest index, among those that can take every task; with `spread`,
    when none can, the nodes with the most room take them in turn. Every task is feasible
    (CPU, memory, GPUs, model, selector, taints), so the placement keeps the contract."""
    task = spec.task
    nodes = np.asarray(nodes, dtype=np.int64)
    room = task_room(spec, task, state, nodes)
    fits = np.flatnonzero(room >= count)
    if fits.size:
        free = state.gpu_free[nodes[fits]]
        whole = (free == MILLI).sum(axis=1)
        best = fits[np.lexsort((nodes[fits], free.sum(axis=1), whole))[0]]
        plan = [(int(nodes[best]), count)]
    elif spread and int(room.sum()) >= count:
        plan = _spread(nodes, room, count)
    else:
        return None
    return Placement(tuple(t for node, k in plan for t in fill_node(spec, state, node, k)))


def _spread(nodes: IntArray, room: IntArray, count: int) -> list[tuple[int, int]]:
    """(node, tasks) over the nodes with the most room first (lowest index on ties)."""
    plan = []
    for i in np.lexsort((nodes, -room)).tolist():
        take = min(int(room[i]), count)
        if take:
            plan.append((int(nodes[i]), take))
            count -= take
        if not count:
            break
    return plan


def fill_node(spec: JobSpec, state: ClusterState, node: int, count: int) -> list[TaskPlacement]:
    """Take `count` tasks of `spec` on `node`, each on `select_gpus`'s GPUs."""
    task = spec.task
    name = state.nodes[node].name
    placed = []
    for _ in range(count):
        gpus = select_gpus(task, state.gpu_free[node], state.gpu_count[node])
        state.allocate(node, gpus, task.gpu_milli, task.cpu_milli, task.mem_mib)
        placed.append(TaskPlacement(name, gpus, task.gpu_milli))
    return placed


def take(state: ClusterState, spec: JobSpec, placement: Placement) -> None:
    """Allocate every task of `placement` (auxiliary parts at their own request)."""
    for task in placement.tasks:
        request = task.request or spec.task
        node = state.node_index[task.node]
        state.allocate(node, task.gpus, task.gpu_milli, request.cpu_milli, request.mem_mib)


def release(state: ClusterState, spec: JobSpec, placement: Placement) -> None:
    """Return every task of `placement` to `state` (auxiliary parts at their own request)."""
    for task in placement.tasks:
        request = task.request or spec.task
        node = state.node_index[task.node]
        state.release(node, task.gpus, task.gpu_milli, request.cpu_milli, request.mem_mib)


def allocation_shape(placement: Placement, cluster: ClusterState) -> AllocationShape:
    """What a work model (and a round policy deciding whether a job keeps its place)
    sees of `placement`: the job's own tasks, with auxiliary parts listed in `parts`.
    Both hosts describe running jobs with it, so a policy reads the same shape live as
    in the simulator."""
    replicas = placement.replica_tasks
    nodes = tuple(dict.fromkeys(t.node for t in replicas))
    models = {cluster.nodes[cluster.node_index[n]].gpu_model for n in nodes}
    # A job spread over several models runs at the pace of the slowest; work models
    # see the first (sorted) one, and mixed placements are rare by policy design.
    model = sorted(models)[0] if models else ""
    milli = replicas[0].gpu_milli if replicas else MILLI
    if replicas and cluster.node_index[replicas[0].node] in cluster.whole_only:
        milli = MILLI  # a share of a GPU that cannot be shared runs on all of it
    return AllocationShape(
        gpu_model=model,
        num_gpus=sum(len(t.gpus) for t in replicas),
        num_nodes=len(nodes),
        gpu_milli=milli,
        replicas=len(replicas),
        gpus_per_node=tuple(sum(len(t.gpus) for t in replicas if t.node == n) for n in nodes),
        gpu_models=tuple(sorted(models)),
        mode=placement.mode,
        parts=tuple(_part_shape(t) for t in placement.part_tasks),
    )


def _part_shape(task: TaskPlacement) -> PartShape:
    cpu = task.request.cpu_milli if task.request is not None else 0
    return PartShape(task.part, cpu, task.gpu_milli)
