"""The controller's validating decoder for pods and nodes: raw API JSON in, slotted
records out, holding only the fields the scheduler reads, already typed.

Decoding never raises. Whatever cannot be read as written (an annotation that is not a
number, a negative restart count, a malformed quantity) becomes a `Problem` naming the
field, the field takes its default, and the record carries the problem: the cache and
the scheduler set such objects aside and report them, and nothing malformed reaches a
policy. Anyone who can annotate a pod must not be able to stop the scheduler.

Decoding into typed client models costs 10-15× more than `json.loads` at thousands of
pods (reference kubernetes.md §1.7), so the cache keeps these small records instead.

Over 500 lines because every pod and node field the controller reads is decoded and
validated here, the one validating place at the edge (DESIGN.md).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from policies import MILLI, Taint, Toleration

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
ATTAINED_BY_MODEL = f"{DOMAIN}/attained-gpu-s-by-model"
"""JSON object: GPU-seconds received on each GPU model (Gavel weighs a job by its time
on each model), carried with `attained-gpu-s` when a pod is recreated."""
RESTARTS = f"{DOMAIN}/restarts"
PREEMPTIBLE = f"{DOMAIN}/preemptible"
"""`false`: policies never preempt or resize the job once it runs (absent: `true`)."""

# What the controller writes at bind time (Binding annotations).
ASSIGNED_GPUS = f"{DOMAIN}/assigned-gpus"
ASSIGNED_MILLI = f"{DOMAIN}/assigned-milli"
BOUND_AT = f"{DOMAIN}/bound-at"

GPU_RESOURCE = "nvidia.com/gpu"
MODEL_LABELS = (f"{DOMAIN}/gpu-model", "nvidia.com/gpu.product")
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU Feature Discovery's per-GPU memory in MiB."""
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
"""GPU Feature Discovery's count of physical GPUs."""
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
_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

MAX_SECONDS = 1e11
"""Upper bound for times and durations we accept (about 3,000 years)."""
MAX_GANG = 10_000
MAX_GPU_INDEX = 1024


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource quantity (`500m`, `16Gi`, `1e3`) as an exact decimal."""
    match = _QUANTITY.match(str(text).strip())
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a resource quantity: {text!r}")
    try:
        value = Decimal(match.group(1)) * Decimal(_SUFFIX[match.group(2)])
    except ArithmeticError:
        raise ValueError(f"not a resource quantity: {text!r}") from None
    if not value.is_finite() or value < 0 or value > Decimal(10) ** 21:
        raise ValueError(f"quantity out of range: {text!r}")
    return value


def cpu_milli(text: str | int | float) -> int:
    return int((parse_quantity(text) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def mem_mib(text: str | int | float) -> int:
    return int((parse_quantity(text) / 2**20).to_integral_value(rounding="ROUND_CEILING"))


def parse_time(text: str | None) -> float:
    """RFC 3339 (as the API server writes it) to Unix seconds; 0.0 when absent."""
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_duration(text: str) -> float:
    """A Go duration (`90s`, `1h30m`, `250ms`) in seconds."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _DURATION_UNIT[u] for n, u in parts)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an object was set aside: the field as written in the object, and what is
    wrong with its value."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class PodAnnotations:
    """gpufleet's pod annotations, typed. Defaults stand where an annotation is absent
    or unreadable (then the pod's `problems` say which)."""

    job_id: str = ""
    submit_time: float | None = None
    attained_gpu_s: float = 0.0
    attained_by_model: Mapping[str, float] = field(default_factory=dict)
    restarts: int = 0
    gang_size: int | None = None
    runtime_s: float | None = None
    gpu_models: frozenset[str] | None = None
    share_milli: int | None = None
    assigned_gpus: tuple[int, ...] | None = None
    """GPU indices our Binding recorded (None: not bound by us, or unreadable)."""
    assigned_milli: int = 0
    bound_at: float | None = None
    preemptible: bool = True


OWN_ANNOTATIONS = frozenset(
    {
        JOB_ID,
        SUBMIT_TIME,
        ATTAINED_GPU_S,
        ATTAINED_BY_MODEL,
        RESTARTS,
        GANG_SIZE,
        RUNTIME,
        GPU_MODELS,
        GPU_MILLI,
        PREEMPTIBLE,
    }
)
"""Annotations read only on this scheduler's own pods (another scheduler's pod may carry
anything there: it is not ours to judge)."""


@dataclass(frozen=True, slots=True)
class PodClaim:
    """One `spec.resourceClaims[]` entry of a pod (Dynamic Resource Allocation)."""

    name: str
    claim: str | None
    """The ResourceClaim's name: given, or made from a template (then read from
    `status.resourceClaimStatuses`); None when there is none (yet, if `waiting`)."""
    waiting: bool = False
    """Made from a template, and kube-controller-manager has not created it yet."""


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
    meta: PodAnnotations = field(default_factory=PodAnnotations)
    problems: tuple[Problem, ...] = ()
    claims: tuple[PodClaim, ...] = ()

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

    def problems_for(self, scheduler_name: str) -> tuple[Problem, ...]:
        """The problems that matter to `scheduler_name`: all of them on its own pods; on
        other schedulers' pods only what it reads there (requests, our Binding record)."""
        if self.scheduler_name == scheduler_name:
            return self.problems
        return tuple(p for p in self.problems if p.field not in _OWN_FIELDS)


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
    problems: tuple[Problem, ...] = ()


_OWN_FIELDS = frozenset(f"metadata.annotations[{key}]" for key in OWN_ANNOTATIONS)


T = TypeVar("T")


class _Reader:
    """Collects problems while fields are read, so one bad field never hides the rest."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def read(self, where: str, parse: Callable[[], T], default: T) -> T:
        try:
            return parse()
        except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as err:
            self.problems.append(Problem(where, str(err) or type(err).__name__))
            return default


def pod_from_json(obj: Mapping[str, Any]) -> PodRecord:
    reader = _Reader()
    meta = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
    cpu, mem, extended = _pod_requests(spec, reader)
    annotations = _strings(meta.get("annotations"))
    return PodRecord(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "default")),
        name=str(meta.get("name", "")),
        scheduler_name=str(spec.get("schedulerName", "default-scheduler")),
        node_name=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
        gated=bool(spec.get("schedulingGates")),
        created=reader.read(
            "metadata.creationTimestamp", lambda: parse_time(meta.get("creationTimestamp")), 0.0
        ),
        cpu_milli=cpu,
        mem_mib=mem,
        resources=extended,
        labels=_strings(meta.get("labels")),
        annotations=annotations,
        node_selector=_strings(spec.get("nodeSelector")),
        tolerations=reader.read(
            "spec.tolerations", lambda: tuple(map(_toleration, spec.get("tolerations") or ())), ()
        ),
        priority=reader.read("spec.priority", lambda: int(spec.get("priority") or 0), 0),
        resource_version=str(meta.get("resourceVersion", "")),
        unschedulable_message=_unschedulable_message(status),
        meta=_pod_annotations(annotations, reader),
        problems=tuple(reader.problems),
        claims=_pod_claims(spec, status),
    )


def _pod_claims(spec: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[PodClaim, ...]:
    made = {
        str(_mapping(s).get("name", "")): _mapping(s).get("resourceClaimName")
        for s in status.get("resourceClaimStatuses") or ()
    }
    claims = []
    for entry in map(_mapping, spec.get("resourceClaims") or ()):
        name = str(entry.get("name", ""))
        if entry.get("resourceClaimName"):
            claims.append(PodClaim(name, str(entry["resourceClaimName"])))
        elif name in made:
            claims.append(PodClaim(name, str(made[name]) if made[name] else None))
        else:
            claims.append(PodClaim(name, None, waiting=True))
    return tuple(claims)


def _pod_annotations(annotations: Mapping[str, str], reader: _Reader) -> PodAnnotations:
    def read(key: str, parse: Callable[[str], Any], default: Any = None) -> Any:
        if key not in annotations:
            return default
        return reader.read(f"metadata.annotations[{key}]", lambda: parse(annotations[key]), default)

    gpus = read(ASSIGNED_GPUS, _gpu_indices)
    return PodAnnotations(
        job_id=annotations.get(JOB_ID, ""),
        submit_time=read(SUBMIT_TIME, lambda t: _number(t, 0.0, MAX_SECONDS)),
        attained_gpu_s=read(ATTAINED_GPU_S, lambda t: _number(t, 0.0, MAX_SECONDS), 0.0),
        attained_by_model=read(ATTAINED_BY_MODEL, _seconds_by_model, {}),
        restarts=read(RESTARTS, lambda t: _integer(t, 0, 1_000_000), 0),
        gang_size=read(GANG_SIZE, lambda t: _integer(t, 1, MAX_GANG)),
        runtime_s=read(RUNTIME, _runtime),
        gpu_models=read(GPU_MODELS, _models),
        share_milli=read(GPU_MILLI, lambda t: _integer(t, 1, MILLI)),
        assigned_gpus=gpus,
        assigned_milli=read(ASSIGNED_MILLI, lambda t: _integer(t, 0, MILLI), 0) if gpus else 0,
        bound_at=read(BOUND_AT, lambda t: _number(t, 0.0, MAX_SECONDS)),
        preemptible=read(PREEMPTIBLE, _boolean, True),
    )


def _number(text: str, low: float, high: float) -> float:
    try:
        # ASCII only, as Go's strconv reads it: Python alone would take "１２" as 12.
        value = float(text) if text.isascii() else math.nan
    except ValueError:
        raise ValueError(f"{_shown(text)} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"{_shown(text)} is not a number")
    if not low <= value <= high:
        raise ValueError(f"{_shown(text)} is outside {low:g}..{high:g}")
    return value


def _integer(text: str, low: int, high: int) -> int:
    if not text.strip().lstrip("+-").isdigit() or not text.isascii():
        raise ValueError(f"{_shown(text)} is not a whole number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{_shown(text)} is outside {low}..{high}")
    return value


def _boolean(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(f"{_shown(text)} is neither true nor false")
    return text.strip().lower() == "true"


def _seconds_by_model(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"{_shown(text)} is not a JSON object of seconds per GPU model")
    for model, seconds in value.items():
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not number or not 0 <= seconds <= MAX_SECONDS:
            raise ValueError(f"{_shown(text)}: {model!r} needs seconds in 0..{MAX_SECONDS:g}")
    return {str(model): float(seconds) for model, seconds in value.items()}


def _runtime(text: str) -> float:
    seconds = parse_duration(text)
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"{_shown(text)} must be a positive duration")
    return seconds


def _models(text: str) -> frozenset[str]:
    models = frozenset(m.strip() for m in text.split("|") if m.strip())
    if not models:
        raise ValueError(f"{_shown(text)} names no GPU model (`|`-separated names)")
    return models


def _gpu_indices(text: str) -> tuple[int, ...]:
    gpus = tuple(_integer(g, 0, MAX_GPU_INDEX) for g in text.split(",") if g.strip())
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"{_shown(text)} repeats a GPU index")
    return gpus


def _shown(text: str) -> str:
    """A value quoted for a message, cut short (annotations may be huge)."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items()}


def _pod_requests(spec: Mapping[str, Any], reader: _Reader) -> tuple[int, int, dict[str, Decimal]]:
    """Effective requests: the sum over containers, or the largest init container if
    that is larger (kube-scheduler's rule, without pod overhead)."""
    cpu = mem = 0
    extended: dict[str, Decimal] = {}
    for i, container in enumerate(spec.get("containers") or ()):
        c, m, ext = _container_requests(container, f"spec.containers[{i}]", reader)
        cpu, mem = cpu + c, mem + m
        for name, value in ext.items():
            extended[name] = extended.get(name, Decimal(0)) + value
    for i, container in enumerate(spec.get("initContainers") or ()):
        c, m, ext = _container_requests(container, f"spec.initContainers[{i}]", reader)
        cpu, mem = max(cpu, c), max(mem, m)
        for name, value in ext.items():
            extended[name] = max(extended.get(name, Decimal(0)), value)
    return cpu, mem, extended


def _container_requests(
    container: Mapping[str, Any], where: str, reader: _Reader
) -> tuple[int, int, dict[str, Decimal]]:
    resources = _mapping(_mapping(container).get("resources"))
    # A limit without a request implies an equal request.
    merged = {**_mapping(resources.get("limits")), **_mapping(resources.get("requests"))}
    at = f"{where}.resources"
    cpu = reader.read(f"{at}[cpu]", lambda: cpu_milli(merged["cpu"]), 0) if "cpu" in merged else 0
    mem = (
        reader.read(f"{at}[memory]", lambda: mem_mib(merged["memory"]), 0)
        if "memory" in merged
        else 0
    )
    extended = _quantities(merged, at, ("cpu", "memory", "ephemeral-storage"), reader)
    return cpu, mem, extended


def _quantities(
    values: Mapping[str, Any], where: str, skip: tuple[str, ...], reader: _Reader
) -> dict[str, Decimal]:
    """Every quantity in `values` but the `skip` names; unreadable ones are left out."""
    parsed: dict[str, Decimal] = {}
    for name, value in values.items():
        if name not in skip:
            quantity = reader.read(f"{where}[{name}]", partial(parse_quantity, value), None)
            if quantity is not None:
                parsed[str(name)] = quantity
    return parsed


def _toleration(obj: Mapping[str, Any]) -> Toleration:
    return Toleration(
        key=str(obj.get("key", "")),
        value=str(obj.get("value", "")),
        exists=obj.get("operator") == "Exists",
        effect=str(obj.get("effect", "")),
    )


def _unschedulable_message(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message", ""))
    return ""


def node_from_json(obj: Mapping[str, Any]) -> NodeRecord:
    reader = _Reader()
    meta = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    allocatable = _mapping(_mapping(obj.get("status")).get("allocatable"))
    taints = tuple(
        Taint(str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "NoSchedule")))
        for t in spec.get("taints") or ()
    )
    if spec.get("unschedulable"):
        taints += (UNSCHEDULABLE_TAINT,)
    skip = ("cpu", "memory", "pods", "ephemeral-storage")
    resources = _quantities(allocatable, "status.allocatable", skip, reader)
    return NodeRecord(
        name=str(meta.get("name", "")),
        cpu_milli=reader.read(
            "status.allocatable[cpu]", lambda: cpu_milli(allocatable.get("cpu", 0)), 0
        ),
        mem_mib=reader.read(
            "status.allocatable[memory]", lambda: mem_mib(allocatable.get("memory", 0)), 0
        ),
        resources=resources,
        labels=_node_labels(_strings(meta.get("labels")), reader),
        annotations=_strings(meta.get("annotations")),
        taints=taints,
        problems=tuple(reader.problems),
    )


def _node_labels(labels: dict[str, str], reader: _Reader) -> dict[str, str]:
    """Labels whose numbers we read (GPU count and memory) must be numbers; an unreadable
    one is dropped, as if the node did not say."""
    for key in (GPU_COUNT_LABEL, GPU_MEMORY_LABEL):
        if key in labels:
            text = labels[key]
            if (
                reader.read(f"metadata.labels[{key}]", partial(_integer, text, 0, 2**40), None)
                is None
            ):
                del labels[key]
    return labels


def first_label(labels: Mapping[str, str], keys: tuple[str, ...], default: str = "") -> str:
    for key in keys:
        if labels.get(key):
            return labels[key]
    return default
