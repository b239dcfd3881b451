"""A cluster snapshot on disk: what `gpufleet whatif` forecasts from.

One JSON object, written by the controller from its cache (or a one-off LIST) and read
by the simulator's forecast; this module is the format both rooms share, and its reader
is the one validating place for it. Times are seconds relative to `taken_at_unix`
(ages and elapsed times count back from it, window starts forward).

```
{"version": 1, "taken_at_unix": 1.7e9, "policy": "fifo", "default_runtime_s": 3600,
 "nodes":   [{"name", "cpu_milli", "mem_mib", "gpus", "gpu_model", "rack"}],
 "running": [{"id", "node", "gpus": [0, 1], "cpu_milli", "mem_mib", "num_gpus",
              "gpu_milli", "elapsed_s", "runtime_s"?, "ctj"?}],
 "pending": [{"id", "age_s", "replicas", "cpu_milli", "mem_mib", "num_gpus", "gpu_milli",
              "allowed_models": [], "priority", "preemptible", "runtime_s"?, "ctj"?,
              "deadline_s"?}],
 "ctjs":    [{"name", "replicas", "cpu_milli", "mem_mib", "num_gpus", "gpu_milli",
              "allowed_models": [], "runtime_s"?, "completed_window_s": [..],
              "windows": [{"index", "start_s", "deadline_s"}]}],
 "history": [{"replicas", "num_gpus", "gpu_milli", "duration_s", "declared_s"?}]}
```

`runtime_s` is a declared runtime (`gpufleet.io/sim-runtime`); `history` holds durations
of finished jobs (the forecast draws remaining times from those of the same shape, and
learns from those that declared a runtime how much longer than declared jobs run);
`completed_window_s` holds how long a CTJ's completed windows took, opening to finish.
A malformed snapshot raises `TraceError` naming the entry and field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from traces.errors import TraceError

SNAPSHOT_VERSION = 1
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Shape:
    """What makes two jobs alike for the duration history: tasks, GPUs per task, share."""

    replicas: int
    num_gpus: int
    gpu_milli: int


@dataclass(frozen=True, slots=True)
class SnapNode:
    name: str
    cpu_milli: int
    mem_mib: int
    gpus: int
    gpu_model: str = ""
    rack: str = ""


@dataclass(frozen=True, slots=True)
class SnapRunning:
    """A pod holding resources now (ours or another scheduler's), one task each."""

    id: str
    node: str
    cpu_milli: int
    mem_mib: int
    num_gpus: int
    gpu_milli: int
    elapsed_s: float
    gpus: tuple[int, ...] | None = None
    runtime_s: float | None = None
    ctj: str = ""
    job: str = ""
    """The job the pod belongs to (a gang's pods share it; default: the pod's id)."""
    replicas: int = 1
    """Pods in that job, for its shape in the duration history."""


@dataclass(frozen=True, slots=True)
class SnapPending:
    id: str
    age_s: float
    cpu_milli: int
    mem_mib: int
    num_gpus: int
    gpu_milli: int
    replicas: int = 1
    allowed_models: tuple[str, ...] = ()
    priority: int = 0
    preemptible: bool = True
    runtime_s: float | None = None
    ctj: str = ""
    deadline_s: float | None = None
    """For a CTJ window's pods: the window's deadline, relative to the snapshot."""


@dataclass(frozen=True, slots=True)
class SnapWindow:
    index: int
    start_s: float
    deadline_s: float


@dataclass(frozen=True, slots=True)
class SnapCtj:
    name: str
    replicas: int
    cpu_milli: int
    mem_mib: int
    num_gpus: int
    gpu_milli: int
    allowed_models: tuple[str, ...] = ()
    runtime_s: float | None = None
    completed_window_s: tuple[float, ...] = ()
    windows: tuple[SnapWindow, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapHistory:
    replicas: int
    num_gpus: int
    gpu_milli: int
    duration_s: float
    declared_s: float | None = None
    """The runtime the job declared, if it did (how much longer it really ran calibrates
    declared runtimes)."""


@dataclass(frozen=True)
class ClusterSnapshot:
    taken_at_unix: float
    nodes: tuple[SnapNode, ...]
    running: tuple[SnapRunning, ...] = ()
    pending: tuple[SnapPending, ...] = ()
    ctjs: tuple[SnapCtj, ...] = ()
    history: tuple[SnapHistory, ...] = ()
    policy: str = ""
    """The live policy (what `whatif --add` answers for)."""
    default_runtime_s: float = 3600.0
    version: int = SNAPSHOT_VERSION
    problems: tuple[str, ...] = field(default=())
    """Objects the capture set aside (named, with their field), carried for the report."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_snapshot(snapshot: ClusterSnapshot, path: str | Path) -> None:
    Path(path).write_text(json.dumps(snapshot.to_json(), indent=1) + "\n", encoding="utf-8")


def read_snapshot(path: str | Path) -> ClusterSnapshot:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TraceError(path, f"not UTF-8 text ({err})") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise TraceError(path, f"not JSON ({err})") from None
    return snapshot_from_json(data, str(path))


def snapshot_from_json(data: object, where: str = "<snapshot>") -> ClusterSnapshot:
    """The snapshot `data` describes; `TraceError` naming `where`, the entry and the field
    for anything missing or malformed."""
    top = _Entry(data, where, "")
    version = top.integer("version", SNAPSHOT_VERSION, minimum=1)
    if version != SNAPSHOT_VERSION:
        raise top.error("version", f"version {version} is not supported (this reads 1)")
    nodes = tuple(_node(e) for e in top.entries("nodes", required=True))
    if not nodes:
        raise top.error("nodes", "a snapshot needs at least one node")
    return ClusterSnapshot(
        taken_at_unix=top.number("taken_at_unix", minimum=0.0),
        nodes=nodes,
        running=tuple(_running(e) for e in top.entries("running")),
        pending=tuple(_pending(e) for e in top.entries("pending")),
        ctjs=tuple(_ctj(e) for e in top.entries("ctjs")),
        history=tuple(_history(e) for e in top.entries("history")),
        policy=top.text("policy", ""),
        default_runtime_s=top.number("default_runtime_s", 3600.0, minimum=1e-3),
        problems=tuple(top.texts("problems")),
    )


def _node(e: _Entry) -> SnapNode:
    gpus = e.integer("gpus", 0)
    return SnapNode(
        name=e.text("name"),
        cpu_milli=e.integer("cpu_milli"),
        mem_mib=e.integer("mem_mib", 0),
        gpus=gpus,
        gpu_model=e.text("gpu_model") if gpus else e.text("gpu_model", ""),
        rack=e.text("rack", ""),
    )


def _running(e: _Entry) -> SnapRunning:
    gpus = e.get("gpus", None)
    indices = None
    if gpus is not None:
        indices = tuple(e.each("gpus", lambda v: _int_value(v, 0), "a GPU index >= 0"))
    return SnapRunning(
        id=e.text("id"),
        node=e.text("node"),
        cpu_milli=e.integer("cpu_milli", 0),
        mem_mib=e.integer("mem_mib", 0),
        num_gpus=e.integer("num_gpus", 0),
        gpu_milli=e.integer("gpu_milli", 0),
        elapsed_s=e.number("elapsed_s", minimum=0.0),
        gpus=indices,
        runtime_s=e.optional_number("runtime_s"),
        ctj=e.text("ctj", ""),
        job=e.text("job", ""),
        replicas=e.integer("replicas", 1, minimum=1),
    )


def _pending(e: _Entry) -> SnapPending:
    return SnapPending(
        id=e.text("id"),
        age_s=e.number("age_s", 0.0, minimum=0.0),
        cpu_milli=e.integer("cpu_milli", 0),
        mem_mib=e.integer("mem_mib", 0),
        num_gpus=e.integer("num_gpus", 0),
        gpu_milli=e.integer("gpu_milli", 0),
        replicas=e.integer("replicas", 1, minimum=1),
        allowed_models=tuple(e.texts("allowed_models")),
        priority=e.integer("priority", 0, minimum=None),
        preemptible=e.flag("preemptible", True),
        runtime_s=e.optional_number("runtime_s"),
        ctj=e.text("ctj", ""),
        deadline_s=e.optional_number("deadline_s", minimum=None),
    )


def _ctj(e: _Entry) -> SnapCtj:
    return SnapCtj(
        name=e.text("name"),
        replicas=e.integer("replicas", 1, minimum=1),
        cpu_milli=e.integer("cpu_milli", 0),
        mem_mib=e.integer("mem_mib", 0),
        num_gpus=e.integer("num_gpus", 1),
        gpu_milli=e.integer("gpu_milli", 1000),
        allowed_models=tuple(e.texts("allowed_models")),
        runtime_s=e.optional_number("runtime_s"),
        completed_window_s=tuple(e.each("completed_window_s", _positive_value, "a duration > 0")),
        windows=tuple(_window(w) for w in e.entries("windows")),
    )


def _window(e: _Entry) -> SnapWindow:
    start = e.number("start_s", minimum=None)
    deadline = e.number("deadline_s", minimum=None)
    if deadline < start:
        raise e.error("deadline_s", f"{deadline!r} is before the window's start {start!r}")
    return SnapWindow(e.integer("index", 0), start, deadline)


def _history(e: _Entry) -> SnapHistory:
    return SnapHistory(
        replicas=e.integer("replicas", 1, minimum=1),
        num_gpus=e.integer("num_gpus", 0),
        gpu_milli=e.integer("gpu_milli", 0),
        duration_s=e.number("duration_s", minimum=1e-3),
        declared_s=e.optional_number("declared_s"),
    )


# -- reading one JSON object with errors that name it ---------------------------------


class _Entry:
    """One JSON object of the snapshot and where it is (`nodes[3]`), for messages."""

    def __init__(self, data: object, where: str, path: str) -> None:
        if not isinstance(data, Mapping):
            raise TraceError(where, f"expected an object, got {type(data).__name__}", field=path)
        self.data = data
        self.where = where
        self.path = path

    def error(self, key: str, message: str) -> TraceError:
        return TraceError(self.where, message, field=f"{self.path}{key}")

    def get(self, key: str, default: object) -> object:
        return self.data.get(key, default)

    def _required(self, key: str) -> object:
        if key not in self.data or self.data[key] is None:
            raise self.error(key, "missing")
        return self.data[key]

    def text(self, key: str, default: str | None = None) -> str:
        value = self._required(key) if default is None else self.data.get(key) or default
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def texts(self, key: str) -> list[str]:
        return self.each(key, lambda v: v if isinstance(v, str) and v else None, "a string")

    def number(self, key: str, default: float | None = None, minimum: float | None = 0.0) -> float:
        value = self._required(key) if default is None else self.data.get(key, default)
        number = _float_value(value, minimum)
        if number is None:
            bound = "" if minimum is None else f" >= {minimum:g}"
            raise self.error(key, f"expected a finite number{bound}, got {value!r}")
        return number

    def optional_number(self, key: str, minimum: float | None = 1e-3) -> float | None:
        if self.data.get(key) is None:
            return None
        return self.number(key, minimum=minimum)

    def integer(self, key: str, default: int | None = None, minimum: int | None = 0) -> int:
        value = self._required(key) if default is None else self.data.get(key, default)
        number = _int_value(value, minimum)
        if number is None:
            bound = "" if minimum is None else f" >= {minimum}"
            raise self.error(key, f"expected an integer{bound}, got {value!r}")
        return number

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def each(self, key: str, read: Callable[[object], T | None], what: str) -> list[T]:
        values = self.data.get(key) or []
        if not isinstance(values, list):
            raise self.error(key, f"expected a list, got {type(values).__name__}")
        out = []
        for i, value in enumerate(values):
            item = read(value)
            if item is None:
                raise self.error(f"{key}[{i}]", f"expected {what}, got {value!r}")
            out.append(item)
        return out

    def entries(self, key: str, required: bool = False) -> Sequence[_Entry]:
        values = self._required(key) if required else self.data.get(key) or []
        if not isinstance(values, list):
            raise self.error(key, f"expected a list, got {type(values).__name__}")
        return [_Entry(v, self.where, f"{self.path}{key}[{i}].") for i, v in enumerate(values)]


def _float_value(value: object, minimum: float | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        return None
    return float(value)


def _int_value(value: object, minimum: int | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return None if minimum is not None and value < minimum else value


def _positive_value(value: object) -> float | None:
    return _float_value(value, 1e-3)
