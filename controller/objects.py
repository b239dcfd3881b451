"""Slotted records extracted from raw API JSON: only the fields the scheduler reads.

Decoding into typed client models costs 10-15× more than `json.loads` at thousands of
pods (reference kubernetes.md §1.7), so the cache keeps these small records instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from policies import Taint, Toleration

DOMAIN = "gpufleet.io"
SCHEDULER_NAME = "gpufleet"

# What a pod may say about itself (set by whoever creates it).
GPU_MILLI = f"{DOMAIN}/gpu-milli"
"""Per-GPU share in milli-GPU for a one-GPU pod (absent: whole GPUs)."""
GPU_MODELS = f"{DOMAIN}/gpu-models"
"""`|`-separated GPU models the pod may run on (absent: any)."""
RUNTIME = f"{DOMAIN}/sim-runtime"
"""Go duration (e.g. `90s`): the KWOK Stage completes the pod this long after it runs."""
JOB_LABEL = f"{DOMAIN}/job"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
GANG_SIZE = f"{DOMAIN}/gang-size"
JOB_ID = f"{DOMAIN}/job-id"
"""Stable job id, carried over when the controller recreates an evicted pod."""
SUBMIT_TIME = f"{DOMAIN}/submit-time"
ATTAINED_GPU_S = f"{DOMAIN}/attained-gpu-s"
RESTARTS = f"{DOMAIN}/restarts"

# What the controller writes at bind time (Binding annotations).
ASSIGNED_GPUS = f"{DOMAIN}/assigned-gpus"
ASSIGNED_MILLI = f"{DOMAIN}/assigned-milli"
BOUND_AT = f"{DOMAIN}/bound-at"

GPU_RESOURCE = "nvidia.com/gpu"
MODEL_LABELS = (f"{DOMAIN}/gpu-model", "nvidia.com/gpu.product")
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU Feature Discovery's per-GPU memory in MiB."""
GPU_UUIDS_ANNOTATION = f"{DOMAIN}/gpu-uuids"
RACK_LABELS = (f"{DOMAIN}/rack", "topology.kubernetes.io/zone")
UNSCHEDULABLE_TAINT = Taint("node.kubernetes.io/unschedulable", "", "NoSchedule")

_SUFFIX: dict[str, Decimal | int] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource quantity (`500m`, `16Gi`, `1e3`) as an exact decimal."""
    match = _QUANTITY.match(str(text).strip())
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a resource quantity: {text!r}")
    return Decimal(match.group(1)) * Decimal(_SUFFIX[match.group(2)])


def cpu_milli(text: str | int | float) -> int:
    return int((parse_quantity(text) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def mem_mib(text: str | int | float) -> int:
    return int((parse_quantity(text) / 2**20).to_integral_value(rounding="ROUND_CEILING"))


def parse_time(text: str | None) -> float:
    """RFC 3339 (as the API server writes it) to Unix seconds; 0.0 when absent."""
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class PodRecord:
    """One pod as the scheduler sees it. Equality ignores `resource_version` and the
    scheduling condition, so a status patch of ours does not look like a change."""

    uid: str
    namespace: str
    name: str
    scheduler_name: str
    node_name: str
    phase: str
    deleting: bool
    gated: bool
    created: float
    cpu_milli: int
    mem_mib: int
    resources: Mapping[str, Decimal]
    """Extended resources (limits, else requests) summed over containers."""
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    node_selector: Mapping[str, str]
    tolerations: tuple[Toleration, ...]
    priority: int
    resource_version: str = field(compare=False)
    unschedulable_message: str = field(compare=False, default="")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def wants(self, scheduler_name: str) -> bool:
        """A pod this scheduler should place now."""
        return (
            self.scheduler_name == scheduler_name
            and not self.node_name
            and not self.deleting
            and not self.gated
            and self.phase in ("", "Pending")
        )


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node: allocatable resources, labels and taints (heartbeats are left out, so
    a status update that changes nothing we read compares equal)."""

    name: str
    cpu_milli: int
    mem_mib: int
    resources: Mapping[str, Decimal]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    taints: tuple[Taint, ...]


def pod_from_json(obj: Mapping[str, Any]) -> PodRecord:
    meta = obj.get("metadata", {})
    spec = obj.get("spec", {})
    status = obj.get("status", {})
    cpu, mem, extended = _pod_requests(spec)
    return PodRecord(
        uid=meta.get("uid", ""),
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        scheduler_name=spec.get("schedulerName", "default-scheduler"),
        node_name=spec.get("nodeName", ""),
        phase=status.get("phase", ""),
        deleting=bool(meta.get("deletionTimestamp")),
        gated=bool(spec.get("schedulingGates")),
        created=parse_time(meta.get("creationTimestamp")),
        cpu_milli=cpu,
        mem_mib=mem,
        resources=extended,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=tuple(_toleration(t) for t in spec.get("tolerations") or ()),
        priority=int(spec.get("priority") or 0),
        resource_version=meta.get("resourceVersion", ""),
        unschedulable_message=_unschedulable_message(status),
    )


def _pod_requests(spec: Mapping[str, Any]) -> tuple[int, int, dict[str, Decimal]]:
    """Effective requests: the sum over containers, or the largest init container if
    that is larger (kube-scheduler's rule, without pod overhead)."""
    cpu = mem = 0
    extended: dict[str, Decimal] = {}
    for container in spec.get("containers") or ():
        c, m, ext = _container_requests(container)
        cpu, mem = cpu + c, mem + m
        for name, value in ext.items():
            extended[name] = extended.get(name, Decimal(0)) + value
    for container in spec.get("initContainers") or ():
        c, m, ext = _container_requests(container)
        cpu, mem = max(cpu, c), max(mem, m)
        for name, value in ext.items():
            extended[name] = max(extended.get(name, Decimal(0)), value)
    return cpu, mem, extended


def _container_requests(container: Mapping[str, Any]) -> tuple[int, int, dict[str, Decimal]]:
    resources = container.get("resources") or {}
    # A limit without a request implies an equal request.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    cpu = cpu_milli(merged["cpu"]) if "cpu" in merged else 0
    mem = mem_mib(merged["memory"]) if "memory" in merged else 0
    extended = {
        name: parse_quantity(value)
        for name, value in merged.items()
        if name not in ("cpu", "memory", "ephemeral-storage")
    }
    return cpu, mem, extended


def _toleration(obj: Mapping[str, Any]) -> Toleration:
    return Toleration(
        key=obj.get("key", ""),
        value=obj.get("value", ""),
        exists=obj.get("operator") == "Exists",
        effect=obj.get("effect", ""),
    )


def _unschedulable_message(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message", ""))
    return ""


def node_from_json(obj: Mapping[str, Any]) -> NodeRecord:
    meta = obj.get("metadata", {})
    spec = obj.get("spec", {})
    allocatable = obj.get("status", {}).get("allocatable") or {}
    taints = tuple(
        Taint(t.get("key", ""), t.get("value", ""), t.get("effect", "NoSchedule"))
        for t in spec.get("taints") or ()
    )
    if spec.get("unschedulable"):
        taints += (UNSCHEDULABLE_TAINT,)
    return NodeRecord(
        name=meta.get("name", ""),
        cpu_milli=cpu_milli(allocatable.get("cpu", 0)),
        mem_mib=mem_mib(allocatable.get("memory", 0)),
        resources={
            name: parse_quantity(value)
            for name, value in allocatable.items()
            if name not in ("cpu", "memory", "pods", "ephemeral-storage")
        },
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        taints=taints,
    )


def first_label(labels: Mapping[str, str], keys: tuple[str, ...], default: str = "") -> str:
    for key in keys:
        if labels.get(key):
            return labels[key]
    return default
