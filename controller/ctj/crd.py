"""The ContinualTrainingJob custom resource: API coordinates and the spec/status value
objects the reconciler reads and writes.

The schema itself (with its validation rules) is `deploy/crd/continualtrainingjobs.yaml`;
the API server enforces it, so parsing here trusts the shape and applies the same
defaults for objects written before a default existed. Field reference: docs/crd.md.

Over 500 lines because the spec, the status and their JSON forms are one schema's value
objects: split, the reading and the writing of a field would live in different files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.kube.objects import Problem, parse_time
from controller.scheduling.effects import now_rfc3339
from policies import MILLI
from policies.continual import AccuracyCurve, DriftTrigger, RetrainConfig, has_whole_share
from policies.windows import COMPLETED, CronSchedule, Window

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
MAX_REPLICAS = f"{GROUP}/max-replicas"
GPU_MEMORY_MIB = f"{GROUP}/gpu-memory-mib"
THROUGHPUT = f"{GROUP}/relative-throughput"
"""`model=factor,...`: the spec's GPU types, for heterogeneity-aware policies."""
ACCURACY = f"{GROUP}/accuracy"
"""`ceiling,floor,decayPerHour,halfGainGpuSeconds`: the stream's accuracy curve."""
WORK_GPU_S = f"{GROUP}/work-gpu-seconds"
"""Work of the window's chosen retraining config, reference-GPU-seconds."""
CONFIG = f"{GROUP}/config"
"""Name of the window's chosen retraining config."""
ACC_START = f"{GROUP}/accuracy-at-start"
"""The model's accuracy at the window's opening (`policies.windows.DeployedModel`)."""
GAIN = f"{GROUP}/gain"
"""Accuracy points the window's retraining adds at its data time (`AccuracyCurve.gain`)."""
SERVING = f"{GROUP}/serving"
"""Serving quality of the stream's inference grant while the window retrains, in [0, 1]:
(grant / milliGpu)^gamma, 1 without a share (`WindowInfo.serving` scales the gain's value)."""

PHASE_PENDING = "Pending"
PHASE_RETRAINING = "Retraining"
PHASE_WAITING = "Waiting"
PHASE_COMPLETED = "Completed"
PHASE_INVALID = "Invalid"


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
    trigger: DriftTrigger | None = None
    """Retrain on drift: windows open when the trigger fires (None: on the clock)."""


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
    inference_milli: int = 0
    """Milli-GPU the model's serving holds (`spec.inference.milliGpu`; 0: none)."""
    inference_gamma: float = 0.5
    history_limit: int = 1
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


def window_to_json(window: Window) -> dict[str, Any]:
    return {
        "index": window.index,
        "start": _window_time(window.start),
        "deadline": _window_time(window.deadline),
        "end": _window_time(window.end),
    }


def _window_time(t: float) -> str:
    """Microseconds when there are any: a drift-triggered window opens at a fraction of
    a second, and the recorded window is what later reconciles judge it by. Whole
    seconds otherwise, as `kubectl get ctj` shows the deadline."""
    return now_rfc3339(t, micro=not float(t).is_integer())


def window_from_json(obj: Mapping[str, Any]) -> Window:
    return Window(
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


@dataclass(frozen=True, slots=True)
class ModelAccuracy:
    """The deployed model's accuracy bookkeeping (`policies.windows.DeployedModel`):
    `accuracy` at `since`, and `deployed` right after the last deployment."""

    accuracy: float
    since: float
    deployed: float

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "since": now_rfc3339(self.since, micro=True),
            "deployed": self.deployed,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelAccuracy:
        return cls(_finite(obj["accuracy"]), parse_time(obj["since"]), _finite(obj["deployed"]))


@dataclass(frozen=True, slots=True)
class ObservedAccuracy:
    """`status.observedAccuracy`, written by the user's evaluation job: the serving
    model's accuracy measured at `time`."""

    value: float
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "time": now_rfc3339(self.time, micro=True)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ObservedAccuracy:
        return cls(_finite(obj["value"]), parse_time(obj["time"]))


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
    model: ModelAccuracy | None = None
    observed: ObservedAccuracy | None = None

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "observedGeneration": self.observed_generation,
            "placements": [p.to_json() for p in self.placements],
            "history": [h.to_json() for h in self.history],
            "conditions": [c.to_json(self.observed_generation) for c in self.conditions],
        }
        # Absent, not 0, until a window has an outcome: `kubectl get ctj` prints blanks.
        if self.windows_recorded:
            out["windowsRecorded"] = self.windows_recorded
            out["completedWindows"] = self.completed_windows
            out["missedDeadlines"] = self.missed_deadlines
        if self.current_window is not None:
            out["currentWindow"] = window_to_json(self.current_window)
        if self.last_retrain is not None:
            out["lastRetrainTime"] = now_rfc3339(self.last_retrain)
        if self.model is not None:
            out["model"] = self.model.to_json()
        if self.observed is not None:
            out["observedAccuracy"] = self.observed.to_json()
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
            current_window=window_from_json(window) if window else None,
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
            model=(
                _at("status.model", lambda: ModelAccuracy.from_json(obj["model"]))
                if obj.get("model")
                else None
            ),
            observed=(
                _at(
                    "status.observedAccuracy",
                    lambda: ObservedAccuracy.from_json(obj["observedAccuracy"]),
                )
                if obj.get("observedAccuracy")
                else None
            ),
        )


@dataclass(frozen=True)
class Ctj:
    """One ContinualTrainingJob as read from the API; `raw` is the object as served
    (status writes send it back with its resourceVersion as the precondition). A CTJ
    whose spec or status cannot be read carries `problem`; its `spec` is then
    `UNREADABLE_SPEC` and the reconciler acts on nothing but the problem."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: float
    spec: CtjSpec
    status: CtjStatus
    raw: Mapping[str, Any]
    problem: Problem | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def deleting(self) -> bool:
        return bool(self.raw.get("metadata", {}).get("deletionTimestamp"))


UNREADABLE_SPEC = CtjSpec(image="", retrain=RetrainSchedule(deadline_s=0))
"""Stands in for a spec that could not be read (see `Ctj.problem`)."""


class FieldError(ValueError):
    """A CTJ field that cannot be read as written."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


T = TypeVar("T")


def _at(field: str, read: Callable[[], T]) -> T:
    """`read()`, with any failure reported as a `FieldError` naming `field`."""
    try:
        return read()
    except FieldError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, ArithmeticError) as err:
        message = f"missing {err}" if isinstance(err, KeyError) else str(err) or repr(err)
        raise FieldError(Problem(field, message)) from None


def ctj_from_json(obj: Mapping[str, Any]) -> Ctj:
    """Never raises: an unreadable spec or status becomes the CTJ's `problem`."""
    meta = obj.get("metadata") or {}
    problem = None
    try:
        spec = _at("spec", lambda: spec_from_json(obj.get("spec") or {}))
        status = _at("status", lambda: CtjStatus.from_json(obj.get("status")))
    except FieldError as err:
        spec, status, problem = UNREADABLE_SPEC, CtjStatus(), err.problem
    return Ctj(
        namespace=str(meta.get("namespace", "default")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 1),
        created=parse_time(meta.get("creationTimestamp")),
        spec=spec,
        status=status,
        raw=obj,
        problem=problem,
    )


def spec_from_json(spec: Mapping[str, Any]) -> CtjSpec:
    """The spec as typed values; a field that cannot be read raises `FieldError`."""
    resources = _at("spec.resources", lambda: dict(spec.get("resources") or {}))
    replicas = _at("spec.replicas", lambda: dict(spec.get("replicas") or {}))
    low = _at("spec.replicas.min", lambda: _positive(replicas.get("min", 1)))
    pod_meta = _at("spec.podMetadata", lambda: dict(spec.get("podMetadata") or {}))
    accuracy = spec.get("accuracy")
    inference = _at("spec.inference", lambda: dict(spec.get("inference") or {}))
    retrain = _at("spec.retrain", lambda: dict(spec["retrain"]))
    decoded = CtjSpec(
        image=_at("spec.image", lambda: _text(spec["image"])),
        retrain=_retrain(retrain),
        gpu=_gpu(_at("spec.resources.gpu", lambda: dict(resources.get("gpu") or {}))),
        command=_at("spec.command", lambda: tuple(map(str, spec.get("command") or ()))),
        args=_at("spec.args", lambda: tuple(map(str, spec.get("args") or ()))),
        env=_at(
            "spec.env",
            lambda: tuple((e["name"], str(e.get("value", ""))) for e in spec.get("env") or ()),
        ),
        model_uri=str((spec.get("model") or {}).get("checkpointURI", "")),
        data_source=str((spec.get("data") or {}).get("source", "")),
        cpu=str(resources.get("cpu", "1")),
        memory=str(resources.get("memory", "1Gi")),
        gpu_types=_at(
            "spec.resources.gpuTypes",
            lambda: {
                str(t["model"]): _finite(t.get("relativeThroughput", 1.0))
                for t in resources.get("gpuTypes") or ()
            },
        ),
        min_replicas=low,
        max_replicas=_at("spec.replicas.max", lambda: _positive(replicas.get("max", low))),
        gang=bool(spec.get("gang", True)),
        priority_class=str(spec.get("priorityClassName", "")),
        preemptible=bool(spec.get("preemptible", True)),
        configs=_at("spec.retrain.configs", lambda: _configs(retrain.get("configs") or ())),
        accuracy=_at("spec.accuracy", lambda: _curve(accuracy)) if accuracy else None,
        initial_accuracy=(
            _at("spec.accuracy.initial", lambda: _finite(accuracy["initial"]))
            if accuracy and "initial" in accuracy
            else None
        ),
        inference_milli=_at("spec.inference.milliGpu", lambda: _share(inference)),
        inference_gamma=_at("spec.inference.gamma", lambda: _exponent(inference.get("gamma", 0.5))),
        history_limit=_at("spec.historyLimit", lambda: int(spec.get("historyLimit", 1))),
        pod_labels=_at("spec.podMetadata.labels", lambda: _strings(pod_meta.get("labels"))),
        pod_annotations=_at(
            "spec.podMetadata.annotations", lambda: _strings(pod_meta.get("annotations"))
        ),
        node_selector=_at("spec.nodeSelector", lambda: _strings(spec.get("nodeSelector"))),
        tolerations=_at(
            "spec.tolerations", lambda: tuple(dict(t) for t in spec.get("tolerations") or ())
        ),
    )
    if decoded.max_replicas < decoded.min_replicas:
        raise FieldError(Problem("spec.replicas.max", "must be at least replicas.min"))
    problem = _unplaceable_stream(decoded)
    if problem is not None:
        raise FieldError(problem)
    return decoded


_VALUED = "with accuracy and retrain.configs"


def _unplaceable_stream(spec: CtjSpec) -> Problem | None:
    """Why a valued CTJ (accuracy and configs: a stream the continual allocators value)
    could never run as the simulator's stream, naming the field; the CRD's rules say the
    same. Its window runs on `replicas.min` to `replicas.max` one-GPU replicas (or one
    replica on a share of a GPU), as one gang, and is given 1, 2, 4 or 8 GPUs."""
    if spec.accuracy is None or not spec.configs:
        return None
    low, high = spec.min_replicas, spec.max_replicas
    if spec.gpu.count > 1:
        return Problem(
            "spec.resources.gpu.count",
            f"above 1 is not supported {_VALUED}: a valued window's replica is one GPU "
            "(ask for k GPUs with replicas.min k)",
        )
    if low > 1 and spec.gpu.milli < MILLI:
        return Problem(
            "spec.replicas.min",
            f"above 1 needs whole GPUs (resources.gpu.milli 1000) {_VALUED} "
            "(a window never runs on fewer than replicas.min GPUs)",
        )
    if low > 1 and not spec.gang:
        return Problem(
            "spec.gang",
            f"false needs replicas.min 1 {_VALUED} (a window's replicas.min GPUs run as one gang)",
        )
    if not has_whole_share(low, high):
        return Problem(
            "spec.replicas",
            f"min {low} to max {high} must include 1, 2, 4 or 8 GPUs {_VALUED} (the "
            "shares thief, edf and fairshare give a window)",
        )
    return None


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def _cron(value: object) -> str:
    """A cron expression `policies.windows` parses (5 fields, or 6 with seconds first)."""
    text = _text(value)
    CronSchedule(text)
    return text


def _positive(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def _share(inference: Mapping[str, Any]) -> int:
    milli = int(inference.get("milliGpu", 0))
    if inference and not 1 <= milli <= MILLI:
        raise ValueError(f"must be 1 to {MILLI} milli-GPU, got {milli}")
    return milli


def _exponent(value: Any) -> float:
    number = _finite(value)
    if not 0 < number <= 1:
        raise ValueError(f"must be above 0 and at most 1, got {number}")
    return number


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {value!r}")
    return number


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(value or {}).items()}


def _retrain(obj: Mapping[str, Any]) -> RetrainSchedule:
    start = obj.get("startTime")
    return RetrainSchedule(
        deadline_s=_at("spec.retrain.deadlineSeconds", lambda: _positive(obj["deadlineSeconds"])),
        window_s=(
            _at("spec.retrain.windowSeconds", lambda: _positive(obj["windowSeconds"]))
            if "windowSeconds" in obj
            else None
        ),
        cron=_at("spec.retrain.schedule", lambda: _cron(obj["schedule"]))
        if "schedule" in obj
        else None,
        start_time=_at("spec.retrain.startTime", lambda: parse_time(start)) if start else None,
        windows=_at("spec.retrain.windows", lambda: _positive(obj["windows"]))
        if "windows" in obj
        else None,
        trigger=_at("spec.retrain.trigger", lambda: _trigger(obj["trigger"]))
        if obj.get("trigger")
        else None,
    )


def _gpu(obj: Mapping[str, Any]) -> GpuRequest:
    memory = obj.get("memoryMiB")
    return GpuRequest(
        count=_at("spec.resources.gpu.count", lambda: int(obj.get("count", 1))),
        milli=_at("spec.resources.gpu.milli", lambda: int(obj.get("milli", MILLI))),
        memory_mib=(
            _at("spec.resources.gpu.memoryMiB", lambda: int(memory)) if memory is not None else None
        ),
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


def _trigger(obj: Mapping[str, Any]) -> DriftTrigger:
    return DriftTrigger(
        below=_finite(obj.get("below", 0.0)),
        drop=_finite(obj.get("drop", 0.0)),
        min_gap_s=_finite(obj.get("minGapSeconds", 600.0)),
    )
