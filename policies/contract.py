"""The placement contract: what a valid `Place` or `Resize` is, for both hosts.

A placement gives a job one task per replica: `spec.replicas` of them (from
`min_replicas` to `max_replicas` for an elastic job). Each task names an existing node and
exactly `spec.task.num_gpus` distinct GPU indices below that node's GPU count, each at
`spec.task.gpu_milli` (no GPUs and 0 milli for a CPU-only task; a one-GPU task of an
elastic job may take any share of its GPU, as the share allocators time-slice it). A GPU
task lands on a GPU model the job allows; every task on a node whose labels match the
job's node selector and whose NoSchedule/NoExecute taints it tolerates. An auxiliary part
task is held to its own request. Those are the static rules (`check_shape`); on top,
the CPU, memory and milli-GPU of all the job's tasks together must be free now
(`check_fits`; on a node whose GPUs cannot be shared a task's GPU counts whole). The
simulator and the controller apply every decision through `check_placement`; a broken
rule raises `PlacementError` naming the job and the rule.
"""

from __future__ import annotations

from typing import NoReturn

from policies.cluster import MILLI, ClusterState
from policies.gpu_models import admits
from policies.jobs import JobSpec, Placement, TaskPlacement, TaskRequest
from policies.placement import selector_mask, taint_mask


class PlacementError(ValueError):
    """A decision breaks the placement contract; the message names the job and the rule."""


def check_placement(spec: JobSpec, placement: Placement, state: ClusterState) -> None:
    """`check_shape`, then `check_fits`."""
    check_shape(spec, placement, state)
    check_fits(spec, placement, state)


def check_shape(spec: JobSpec, placement: Placement, cluster: ClusterState) -> None:
    """The static rules, independent of what is free now."""
    _check_count(spec, len(placement.replica_tasks))
    for task in placement.tasks:
        node = _node_of(spec, task, cluster)
        request = task.request or spec.task
        _check_gpus(spec, task, request, node, cluster)
        _check_labels(spec, task, node, cluster)


def check_fits(spec: JobSpec, placement: Placement, state: ClusterState) -> None:
    """Every task's CPU, memory and milli-GPU are free on `state`, the job's tasks on one
    node or GPU counted together. Does not change `state`."""
    cpu: dict[int, int] = {}
    mem: dict[int, int] = {}
    gpu: dict[tuple[int, int], int] = {}
    for task in placement.tasks:
        node = _node_of(spec, task, state)
        request = task.request or spec.task
        cpu[node] = cpu.get(node, 0) + request.cpu_milli
        mem[node] = mem.get(node, 0) + request.mem_mib
        milli = MILLI if node in state.whole_only else task.gpu_milli  # no sharing there
        for g in task.gpus:
            gpu[node, g] = gpu.get((node, g), 0) + milli
    for node, need in cpu.items():
        if need > state.cpu_free[node]:
            _short(spec, "CPU milli", need, state.cpu_free[node], state.nodes[node].name)
    for node, need in mem.items():
        if need > state.mem_free[node]:
            _short(spec, "memory MiB", need, state.mem_free[node], state.nodes[node].name)
    for (node, g), need in gpu.items():
        if need > state.gpu_free[node, g]:
            where = f"{state.nodes[node].name} GPU {g}"
            _short(spec, "milli-GPU", need, state.gpu_free[node, g], where)


def _check_count(spec: JobSpec, count: int) -> None:
    bounds = spec.elastic
    if bounds is None and count != spec.replicas:
        raise PlacementError(
            f"job {spec.id}: {count} replica task(s) placed, its spec has {spec.replicas}"
        )
    if bounds is not None and not bounds.min_replicas <= count <= bounds.max_replicas:
        raise PlacementError(
            f"job {spec.id}: {count} replica task(s) placed, outside its elastic bounds "
            f"{bounds.min_replicas}..{bounds.max_replicas}"
        )


def _node_of(spec: JobSpec, task: TaskPlacement, cluster: ClusterState) -> int:
    node = cluster.node_index.get(task.node)
    if node is None:
        raise PlacementError(f"job {spec.id}: a task is placed on unknown node {task.node!r}")
    return node


def _check_gpus(
    spec: JobSpec, task: TaskPlacement, request: TaskRequest, node: int, cluster: ClusterState
) -> None:
    # Messages are built only on failure: this runs for every placement of a long replay.
    gpus = task.gpus
    if len(gpus) != request.num_gpus:
        where = _where(spec, task)
        raise PlacementError(f"{where} has {len(gpus)} GPU(s), its request {request.num_gpus}")
    if len(set(gpus)) != len(gpus):
        raise PlacementError(f"{_where(spec, task)} repeats a GPU index {gpus}")
    count = int(cluster.gpu_count[node])
    if gpus and (min(gpus) < 0 or max(gpus) >= count):
        raise PlacementError(f"{_where(spec, task)} names GPU(s) {gpus}; the node has {count}")
    if task.gpu_milli != request.gpu_milli and not _time_sliced(spec, task, request):
        raise PlacementError(
            f"{_where(spec, task)} takes {task.gpu_milli} milli per GPU, "
            f"its request {request.gpu_milli}"
        )
    if request.num_gpus and spec.allowed_models is not None:
        product = cluster.nodes[node].product
        if not admits(spec.allowed_models, product):
            where = _where(spec, task)
            raise PlacementError(f"{where}: GPU model {product!r} is not allowed for the job")


def _where(spec: JobSpec, task: TaskPlacement) -> str:
    return f"job {spec.id}: {_what(task)} on {task.node}"


def _time_sliced(spec: JobSpec, task: TaskPlacement, request: TaskRequest) -> bool:
    """An elastic job's one-GPU replica may run on any share of its GPU."""
    return (
        spec.elastic is not None
        and not task.part
        and request.num_gpus == 1
        and 0 < task.gpu_milli <= MILLI
    )


def _check_labels(spec: JobSpec, task: TaskPlacement, node: int, cluster: ClusterState) -> None:
    if spec.node_selector and not selector_mask(spec, cluster)[node]:
        raise PlacementError(
            f"job {spec.id}: {_what(task)} on {task.node}, which does not match its "
            f"node selector {dict(spec.node_selector)}"
        )
    if cluster.has_taints and not taint_mask(spec, cluster)[node]:
        raise PlacementError(
            f"job {spec.id}: {_what(task)} on {task.node}, whose taints it does not tolerate"
        )


def _short(spec: JobSpec, resource: str, need: int, free: object, where: str) -> NoReturn:
    raise PlacementError(f"job {spec.id}: needs {need} {resource} on {where}, only {free} free")


def _what(task: TaskPlacement) -> str:
    return f"part {task.part!r}" if task.part else "a task"
