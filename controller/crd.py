"""The ContinualTrainingJob custom resource: API coordinates and the spec/status value
objects the reconciler reads and writes.

The schema itself (with its validation rules) is `deploy/crd/continualtrainingjobs.yaml`;
the API server enforces it, so parsing here trusts the shape and applies the same
defaults for objects written before a default existed. Field reference: docs/crd.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.effects import now_rfc3339
from controller.objects import parse_time
from policies import MILLI
from policies.continual import AccuracyCurve, RetrainConfig

GROUP = "ctj.gpufleet.io"
VERSION = "v1alpha1"
KIND = "ContinualTrainingJob"
PLURAL = "continualtrainingjobs"
API_VERSION = f"{GROUP}/{VERSION}"
COLLECTION_PATH = f"/apis/{GROUP}/{VERSION}/{PLURAL}"

# Labels and annotations on retraining pods.
NAME_LABEL = f"{GROUP}/name"
WINDOW_LABEL = f"{GROUP}/window"
WINDOW_START = f"{GROUP}/window-start"
WINDOW_DEADLINE = f"{GROUP}/window-deadline"
WINDOW_END = f"{GROUP}/window-end"
PREEMPTIBLE = f"{GROUP}/preemptible"
MAX_REPLICAS = f"{GROUP}/max-replicas"
GPU_MEMORY_MIB = f"{GROUP}/gpu-memory-mib"
THROUGHPUT = f"{GROUP}/relative-throughput"
"""`model=factor,...`: the spec's GPU types, for heterogeneity-aware policies."""
ACCURACY = f"{GROUP}/accuracy"
"""`ceiling,floor,decayPerHour,halfGainGpuSeconds`: the stream's accuracy curve."""
WORK_GPU_S = f"{GROUP}/work-gpu-seconds"

PHASE_PENDING = "Pending"
PHASE_RETRAINING = "Retraining"
PHASE_WAITING = "Waiting"
PHASE_COMPLETED = "Completed"
PHASE_INVALID = "Invalid"

COMPLETED = "Completed"
MISSED = "Missed"


def object_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


@dataclass(frozen=True, slots=True)
class GpuRequest:
    count: int = 1
    milli: int = MILLI
    """Per-GPU share; below MILLI only with `count == 1`."""
    memory_mib: int | None = None


@dataclass(frozen=True, slots=True)
class RetrainSchedule:
    deadline_s: int
    window_s: int | None = None
    cron: str | None = None
    start_time: float | None = None
    windows: int | None = None
    """Stop after this many windows (None: never)."""


@dataclass(frozen=True)
class CtjSpec:
    image: str
    retrain: RetrainSchedule
    gpu: GpuRequest = field(default_factory=GpuRequest)
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    model_uri: str = ""
    data_source: str = ""
    cpu: str = "1"
    memory: str = "1Gi"
    gpu_types: Mapping[str, float] = field(default_factory=dict)
    """Allowed GPU models → throughput relative to the reference GPU (empty: any)."""
    min_replicas: int = 1
    max_replicas: int = 1
    gang: bool = True
    priority_class: str = ""
    preemptible: bool = True
    configs: tuple[RetrainConfig, ...] = ()
    accuracy: AccuracyCurve | None = None
    initial_accuracy: float | None = None
    history_limit: int = 1
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Window:
    """Retraining window `index`: opens at `start`, must be retrained by `deadline`,
    closes at `end` (when the next one opens). Unix seconds."""

    index: int
    start: float
    deadline: float
    end: float

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start": now_rfc3339(self.start),
            "deadline": now_rfc3339(self.deadline),
            "end": now_rfc3339(self.end),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Window:
        return cls(
            int(obj["index"]),
            parse_time(obj["start"]),
            parse_time(obj["deadline"]),
            parse_time(obj["end"]),
        )


@dataclass(frozen=True, slots=True)
class PodPlacement:
    pod: str
    node: str
    gpus: str
    gpu_milli: int

    def to_json(self) -> dict[str, Any]:
        return {"pod": self.pod, "node": self.node, "gpus": self.gpus, "gpuMilli": self.gpu_milli}


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    index: int
    outcome: str
    """COMPLETED or MISSED."""
    reason: str
    finished_at: float | None = None

    @property
    def completed(self) -> bool:
        return self.outcome == COMPLETED

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "outcome": self.outcome, "reason": self.reason}
        if self.finished_at is not None:
            out["finishedAt"] = now_rfc3339(self.finished_at)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> WindowOutcome:
        finished = obj.get("finishedAt")
        return cls(
            int(obj["index"]),
            str(obj["outcome"]),
            str(obj.get("reason", "")),
            parse_time(finished) if finished else None,
        )


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str = ""
    last_transition: float = 0.0

    def same_state(self, other: Condition | None) -> bool:
        return other is not None and (self.status, self.reason, self.message) == (
            other.status,
            other.reason,
            other.message,
        )

    def to_json(self, generation: int) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": generation,
            "lastTransitionTime": now_rfc3339(self.last_transition),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Condition:
        return cls(
            str(obj["type"]),
            str(obj["status"]),
            str(obj.get("reason", "")),
            str(obj.get("message", "")),
            parse_time(obj.get("lastTransitionTime")),
        )


@dataclass(frozen=True)
class CtjStatus:
    phase: str = PHASE_PENDING
    observed_generation: int = 0
    current_window: Window | None = None
    windows_recorded: int = 0
    completed_windows: int = 0
    missed_deadlines: int = 0
    last_retrain: float | None = None
    placements: tuple[PodPlacement, ...] = ()
    history: tuple[WindowOutcome, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "observedGeneration": self.observed_generation,
            "windowsRecorded": self.windows_recorded,
            "completedWindows": self.completed_windows,
            "missedDeadlines": self.missed_deadlines,
            "placements": [p.to_json() for p in self.placements],
            "history": [h.to_json() for h in self.history],
            "conditions": [c.to_json(self.observed_generation) for c in self.conditions],
        }
        if self.current_window is not None:
            out["currentWindow"] = self.current_window.to_json()
        if self.last_retrain is not None:
            out["lastRetrainTime"] = now_rfc3339(self.last_retrain)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> CtjStatus:
        if not obj:
            return cls()
        window = obj.get("currentWindow")
        last = obj.get("lastRetrainTime")
        return cls(
            phase=str(obj.get("phase", PHASE_PENDING)),
            observed_generation=int(obj.get("observedGeneration", 0)),
            current_window=Window.from_json(window) if window else None,
            windows_recorded=int(obj.get("windowsRecorded", 0)),
            completed_windows=int(obj.get("completedWindows", 0)),
            missed_deadlines=int(obj.get("missedDeadlines", 0)),
            last_retrain=parse_time(last) if last else None,
            placements=tuple(
                PodPlacement(p["pod"], p.get("node", ""), p.get("gpus", ""), p.get("gpuMilli", 0))
                for p in obj.get("placements") or ()
            ),
            history=tuple(WindowOutcome.from_json(h) for h in obj.get("history") or ()),
            conditions=tuple(Condition.from_json(c) for c in obj.get("conditions") or ()),
        )


@dataclass(frozen=True)
class Ctj:
    """One ContinualTrainingJob as read from the API; `raw` is the object as served
    (status writes send it back with its resourceVersion as the precondition)."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: float
    spec: CtjSpec
    status: CtjStatus
    raw: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def deleting(self) -> bool:
        return bool(self.raw.get("metadata", {}).get("deletionTimestamp"))


def ctj_from_json(obj: Mapping[str, Any]) -> Ctj:
    meta = obj.get("metadata", {})
    return Ctj(
        namespace=meta.get("namespace", "default"),
        name=meta["name"],
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 1)),
        created=parse_time(meta.get("creationTimestamp")),
        spec=spec_from_json(obj.get("spec") or {}),
        status=CtjStatus.from_json(obj.get("status")),
        raw=obj,
    )


def spec_from_json(spec: Mapping[str, Any]) -> CtjSpec:
    resources = spec.get("resources") or {}
    replicas = spec.get("replicas") or {}
    low = int(replicas.get("min", 1))
    pod_meta = spec.get("podMetadata") or {}
    accuracy = spec.get("accuracy")
    return CtjSpec(
        image=spec["image"],
        retrain=_retrain(spec["retrain"]),
        gpu=_gpu(resources.get("gpu") or {}),
        command=tuple(spec.get("command") or ()),
        args=tuple(spec.get("args") or ()),
        env=tuple((e["name"], e.get("value", "")) for e in spec.get("env") or ()),
        model_uri=(spec.get("model") or {}).get("checkpointURI", ""),
        data_source=(spec.get("data") or {}).get("source", ""),
        cpu=str(resources.get("cpu", "1")),
        memory=str(resources.get("memory", "1Gi")),
        gpu_types={
            t["model"]: float(t.get("relativeThroughput", 1.0))
            for t in resources.get("gpuTypes") or ()
        },
        min_replicas=low,
        max_replicas=int(replicas.get("max", low)),
        gang=bool(spec.get("gang", True)),
        priority_class=spec.get("priorityClassName", ""),
        preemptible=bool(spec.get("preemptible", True)),
        configs=_configs((spec.get("retrain") or {}).get("configs") or ()),
        accuracy=_curve(accuracy) if accuracy else None,
        initial_accuracy=float(accuracy["initial"]) if accuracy and "initial" in accuracy else None,
        history_limit=int(spec.get("historyLimit", 1)),
        pod_labels=dict(pod_meta.get("labels") or {}),
        pod_annotations=dict(pod_meta.get("annotations") or {}),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=tuple(dict(t) for t in spec.get("tolerations") or ()),
    )


def _retrain(obj: Mapping[str, Any]) -> RetrainSchedule:
    start = obj.get("startTime")
    return RetrainSchedule(
        deadline_s=int(obj["deadlineSeconds"]),
        window_s=int(obj["windowSeconds"]) if "windowSeconds" in obj else None,
        cron=obj.get("schedule"),
        start_time=parse_time(start) if start else None,
        windows=int(obj["windows"]) if "windows" in obj else None,
    )


def _gpu(obj: Mapping[str, Any]) -> GpuRequest:
    memory = obj.get("memoryMiB")
    return GpuRequest(
        count=int(obj.get("count", 1)),
        milli=int(obj.get("milli", MILLI)),
        memory_mib=int(memory) if memory is not None else None,
    )


def _configs(items: Sequence[Mapping[str, Any]]) -> tuple[RetrainConfig, ...]:
    return tuple(
        RetrainConfig(c["name"], float(c["workGpuSeconds"]), float(c.get("quality", 1.0)))
        for c in items
    )


def _curve(obj: Mapping[str, Any]) -> AccuracyCurve:
    return AccuracyCurve(
        ceiling=float(obj["ceiling"]),
        floor=float(obj["floor"]),
        decay_per_h=float(obj["decayPerHour"]),
        half_gain_gpu_s=float(obj["halfGainGpuSeconds"]),
    )
