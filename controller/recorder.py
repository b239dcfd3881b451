"""`gpufleet controller record`: watch a cluster and write what happened on it as a trace
directory the simulator replays (`gpufleet simulate --trace DIR`; `traces/canonical.py`).

* `nodes.csv`: the nodes seen, in the canonical cluster schema;
* `jobs.csv`: the canonical job schema. Our pods that arrived unbound are jobs, one per
  pod or gang, which the replay's policy places. Every pod no policy of ours placed in
  the recording is an *occupant* pinned to its node (`node`, `gpus` columns): other
  schedulers' pods, and pods of ours already bound when first seen (running or finished
  when recording began);
* `placements.csv`: where each pod ran
  (`job_id,pod,node,gpus,gpu_milli,start_s,end_s,scheduler`);
* `recording.json`: when the recording began and ended; a replay stops at the end;
* `dra.json` (when the cluster has any): the ResourceSlices, DeviceClasses and
  ResourceClaims seen, each in its last state, as the API served them.

On a cluster with Dynamic Resource Allocation, a node's GPUs in `nodes.csv` are those
its ResourceSlices publish (count and product, `controller.dra`), and a pod with claims
is a job asking for what its claims ask (count, or a share of a device from its
capacity request; a selector that fits some nodes only becomes those nodes' GPU
products as `allowed_models`), so a replay places it on the same kind of GPU.

Times are seconds after the earliest arrival or occupancy. What happens while recording
is timed by the recorder's clock as it sees it. What happened before comes from the
objects: arrival from `gpufleet.io/submit-time` or creation, binding from
`gpufleet.io/bound-at` or the `PodScheduled` condition, end from the containers'
`finishedAt`; nothing earlier than `lookback_s` before the start is kept (older
occupancy starts there). An occupant's GPUs are those the controller's own cache counts
for it (`ClusterCache`, run here on the same events).

A pod that ended ran from its binding to its end. One still running at the end runs for
its stated `gpufleet.io/sim-runtime` if it has not run that long yet, else a minute past
the end (`PAST_END_S`). A job never bound arrives and waits, with its stated runtime or
what the controller's policies assume (`DEFAULT_RUNTIME_S`). A job the controller evicted
and recreated is one job run for its incarnations' total. Limits: pods deleted before
recording began are unknown (the look-back sees only pods still listed, e.g. finished
ones the API server keeps), and a pod of ours deleted before it was bound is left out (a
trace has no withdrawal).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from controller.dra.cli import DraOptions
from controller.dra.inventory import KINDS as DRA_KINDS
from controller.dra.inventory import DraAsk
from controller.kube.objects import (
    SCHEDULER_NAME,
    NodeRecord,
    PodRecord,
    node_from_json,
    parse_time,
    pod_from_json,
)
from controller.scheduling.cache import NODES, ClusterCache
from controller.scheduling.encoders import GpuEncoder
from controller.scheduling.workload import (
    DEFAULT_RUNTIME_S,
    build_workload,
    job_id,
    node_spec,
    task_request,
)
from policies import FixedDuration, JobSpec, TaskRequest
from traces.canonical import (
    JOBS_FILE,
    NODES_FILE,
    PIN_KEY,
    RECORDING_FILE,
    Pin,
    recording_json,
    write_jobs,
    write_nodes,
)
from traces.outputs import output_directory

PLACEMENT_COLUMNS = (
    "job_id",
    "pod",
    "node",
    "gpus",
    "gpu_milli",
    "start_s",
    "end_s",
    "scheduler",
)
DRA_FILE = "dra.json"
DEFAULT_LOOKBACK_S = 86_400.0
PAST_END_S = 60.0
"""How far past the recording's end a pod still running then is recorded to run, so a
replay that stops at the end never sees it leave (however its start shifted)."""


@dataclass
class PodLife:
    pod: PodRecord
    arrived: float
    occupant: bool
    """No policy of ours placed it here: another scheduler's, or ours bound when first seen."""
    started: float | None = None
    ended: float | None = None
    gpus: tuple[int, ...] | None = None
    """The GPUs it held (our Binding's record, else the cache's count); None: not known."""
    gpu_milli: int = 0
    dra: DraAsk | None = None
    """What its claims asked for, sized once they were seen (a pod with claims)."""

    @property
    def begins(self) -> float:
        """When a replay meets it: an occupant when bound, a job when it arrived."""
        if self.occupant and self.started is not None:
            return self.started
        return self.arrived


class TraceRecorder:
    """A `ResourceHandler` for nodes and all pods (terminal ones too: they are the
    look-back) that remembers each pod's arrival, binding, GPUs and end."""

    def __init__(
        self,
        encoder: GpuEncoder,
        scheduler_name: str = SCHEDULER_NAME,
        clock: Callable[[], float] = time.time,
        lookback_s: float = DEFAULT_LOOKBACK_S,
        dra: DraOptions | None = None,
    ) -> None:
        self.encoder = encoder
        self.scheduler_name = scheduler_name
        self.clock = clock
        self.lookback_s = lookback_s
        self.cache = ClusterCache(encoder, scheduler_name, (dra or DraOptions()).state())
        """The controller's count of what each bound pod holds, kept from the same events."""
        self.nodes: dict[str, NodeRecord] = {}
        self.lives: dict[str, PodLife] = {}
        self.began: float | None = None
        self._uncounted: set[str] = set()
        self._unsized: set[str] = set()
        """Our pods with claims not sized yet (their claims not seen yet)."""
        self.dra_objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in DRA_KINDS}
        """Every DRA object seen, by kind and uid, in its last state."""

    def replace(self, kind: str, objects: list[dict[str, Any]]) -> None:
        self.cache.replace(kind, objects)
        if kind in DRA_KINDS:
            self._keep_dra(kind, objects)
            return
        if kind == NODES:
            self.nodes.update((n.name, n) for n in map(node_from_json, objects))
            self._note_charges()
            return
        now = self.clock()
        if self.began is None:
            self.began = now
        present = {obj["metadata"]["uid"] for obj in objects}
        for uid, life in self.lives.items():
            if uid not in present and life.ended is None:
                life.ended = now
        for obj in objects:
            self._observe(obj, now, deleted=False, live=False)
        self._note_charges()

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        self.cache.apply(kind, event, obj)
        if kind in DRA_KINDS:
            self._keep_dra(kind, [obj])
            return
        if kind == NODES:
            node = node_from_json(obj)
            self.nodes[node.name] = node
        else:
            self._observe(obj, self.clock(), deleted=event == "DELETED", live=True)
        self._note_charges()

    def _observe(self, obj: dict[str, Any], now: float, deleted: bool, live: bool) -> None:
        """`live`: a watch event, timed `now`; else a listed pod, new ones timed by the
        object itself (it may have arrived, run and ended before recording began)."""
        pod = pod_from_json(obj)
        life = self.lives.get(pod.uid)
        history = not live and life is None
        if life is None:
            if pod.terminal and not pod.node_name:
                return  # ended without ever holding anything
            ours = pod.scheduler_name == self.scheduler_name
            arrived = _submitted(pod) if history else now
            life = PodLife(pod, arrived, occupant=not ours or bool(pod.node_name))
            self.lives[pod.uid] = life
        life.pod = pod
        if pod.node_name and life.started is None:
            life.started = _bound_at(obj, pod) if history else now
            life.gpus, life.gpu_milli = pod.meta.assigned_gpus, pod.meta.assigned_milli
            if life.gpus is None:
                self._uncounted.add(pod.uid)
        if (deleted or pod.terminal) and life.ended is None:
            ended = _finished_at(obj) if history else None
            life.ended = max(ended or now, life.started or 0.0)
        if pod.claims and life.dra is None and not life.occupant:
            self._unsized.add(pod.uid)
            self._size_claims()

    def _keep_dra(self, kind: str, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            self.dra_objects[kind][str(obj["metadata"].get("uid", ""))] = obj
        self._size_claims()
        self._note_charges()

    def _size_claims(self) -> None:
        """Note what each of our pods' claims ask for, once they can be read."""
        for uid in list(self._unsized):
            life = self.lives[uid]
            ask = self.cache.dra.ask(life.pod, as_new=True)
            if isinstance(ask, DraAsk):
                life.dra = ask
                self._unsized.discard(uid)
            elif life.ended is not None:
                self._unsized.discard(uid)  # gone before its claims could be read

    def _note_charges(self) -> None:
        """Take each new occupant's GPUs from the cache once it counts them (it cannot
        before it knows the node)."""
        ledger = self.cache.ledger
        for uid in list(self._uncounted):
            life = self.lives[uid]
            charge = self.cache.charge_view(uid)
            if charge is not None and ledger.counted(uid):
                life.gpus, life.gpu_milli = charge.gpus, charge.gpu_milli
                self._uncounted.discard(uid)
            elif life.ended is not None:
                self._uncounted.discard(uid)  # never counted: the replay picks its GPUs

    # -- output -----------------------------------------------------------------------

    def write(self, out_dir: Path, force: bool = False) -> int:
        """Write the trace directory, staged, by the rules of `traces.outputs` (`force`:
        also beside files gpufleet did not write); returns the number of rows in jobs.csv."""
        trace = self.trace(self.clock())
        with output_directory(out_dir, "controller record", force) as stage:
            nodes = sorted(self.nodes.values(), key=_name)
            write_nodes(
                [self.cache.dra.adapt(node_spec(n, self.encoder)) for n in nodes],
                stage / NODES_FILE,
            )
            if any(self.dra_objects.values()):
                dra = {kind: list(objects.values()) for kind, objects in self.dra_objects.items()}
                (stage / DRA_FILE).write_text(json.dumps(dra, indent=1, sort_keys=True))
            write_jobs(trace.jobs, stage / JOBS_FILE)
            (stage / "placements.csv").write_text(trace.placements_csv())
            (stage / RECORDING_FILE).write_text(trace.recording_json())
        return len(trace.jobs)

    def trace(self, end: float) -> RecordedTrace:
        """What was recorded up to `end`, on the trace's clock."""
        began = end if self.began is None else self.began
        window = _Window(began - self.lookback_s, end)
        lives = [life for life in self.lives.values() if window.keeps(life)]
        # An occupant of a node gone before recording began held nothing a replay has.
        lives = [life for life in lives if not life.occupant or life.pod.node_name in self.nodes]
        window.origin = min(window.clip(t) for t in [began, *(life.begins for life in lives)])
        trace = RecordedTrace(window, window.at(began))
        seq = {uid: i for i, uid in enumerate(self.lives)}
        groups: dict[str, list[PodLife]] = {}
        for life in lives:
            if life.occupant:
                trace.add(self._occupant(life, window), [life], seq[life.pod.uid])
            else:
                groups.setdefault(job_id(life.pod), []).append(life)
        for members in groups.values():
            job = self._job(members, seq, window)
            if job is not None:
                trace.add(job, members, min(seq[m.pod.uid] for m in members))
        trace.finish()
        return trace

    def _job(self, lives: list[PodLife], seq: Mapping[str, int], window: _Window) -> JobSpec | None:
        first = _incarnations(lives)[0]
        pods = [replace(life.pod, node_name="") for life in first]
        workload = build_workload(pods, seq, self.encoder)
        if not workload.pending:
            return None  # pods the controller could not read either, or an incomplete gang
        spec = workload.pending[0].spec
        asked = lives[0].dra
        if asked is not None:
            task = replace(spec.task, num_gpus=asked.num_gpus, gpu_milli=asked.gpu_milli)
            allowed = spec.allowed_models if spec.allowed_models is not None else asked.models
            spec = replace(spec, task=task, allowed_models=allowed)
        arrived = window.clip(min(life.arrived for life in lives))
        return replace(
            spec,
            id=spec.id.split("/", 1)[-1],
            submit_time=window.at(arrived),
            work=FixedDuration(self._duration(lives, window)),
        )

    def _occupant(self, life: PodLife, window: _Window) -> JobSpec:
        assert life.started is not None
        pod = life.pod
        task = self._held(life)
        gpus = life.gpus if life.gpus and len(life.gpus) == task.num_gpus else None
        return JobSpec(
            id=pod.name,
            submit_time=window.at(window.clip(life.started)),
            task=task,
            work=FixedDuration(self._duration([life], window)),
            priority=pod.priority,
            kind="pod",
            preemptible=False,
            attributes={PIN_KEY: Pin(pod.node_name, gpus)},
        )

    def _held(self, life: PodLife) -> TaskRequest:
        """What the pod holds: its counted GPUs and share, else what it asks for."""
        pod = life.pod
        if life.gpus is not None:
            milli = life.gpu_milli if life.gpus else 0
            with contextlib.suppress(ValueError):
                return TaskRequest(pod.cpu_milli, pod.mem_mib, len(life.gpus), milli)
        try:
            return task_request(pod, self.encoder)
        except ValueError:
            return TaskRequest(pod.cpu_milli, pod.mem_mib)  # as the cache counts it then

    def _duration(self, lives: list[PodLife], window: _Window) -> float:
        """Time run, summed over the job's incarnations; past the end if the last one
        still runs or waits then."""
        stated = lives[0].pod.meta.runtime_s
        if all(life.started is None for life in lives):
            return stated or DEFAULT_RUNTIME_S
        runs = _incarnations(lives)
        ran = 0.0
        for run in runs:
            started = [life.started for life in run if life.started is not None]
            if started:
                ends = [window.end if life.ended is None else life.ended for life in run]
                ran += window.at(max(ends)) - window.at(window.clip(min(started)))
        if any(life.ended is None for life in runs[-1]):
            return stated if stated and stated > ran else round(ran + PAST_END_S, 3)
        return max(0.001, round(ran, 3))


@dataclass
class _Window:
    """What the recording keeps, from `floor` to `end` (Unix seconds), and the trace's
    clock (seconds after `origin`, rounded to the millisecond)."""

    floor: float
    end: float
    origin: float = 0.0

    def keeps(self, life: PodLife) -> bool:
        if life.ended is not None and life.ended <= self.floor:
            return False
        if life.occupant:
            return life.started is not None
        return life.started is not None or life.ended is None  # ran, or waits at the end

    def clip(self, at: float) -> float:
        return max(at, self.floor)

    def at(self, unix_s: float) -> float:
        return round(unix_s - self.origin, 3)


class RecordedTrace:
    """The jobs and placements of a recording, in the order a replay meets them."""

    def __init__(self, window: _Window, began_s: float) -> None:
        self.window = window
        self.began_s = began_s
        self.jobs: list[JobSpec] = []
        self._entries: list[tuple[float, int, JobSpec, list[PodLife]]] = []

    def add(self, job: JobSpec, lives: list[PodLife], seq: int) -> None:
        self._entries.append((job.submit_time, seq, job, lives))

    def finish(self) -> None:
        """Order by time, then by when the recorder first saw them; ids made unique
        (occupants are named by pod, jobs by job id: two may share a name)."""
        self._entries.sort(key=lambda e: e[:2])
        taken: dict[str, int] = {}
        for i, (at, seq, job, lives) in enumerate(self._entries):
            count = taken[job.id] = taken.get(job.id, 0) + 1
            if count > 1:
                job = replace(job, id=f"{job.id}~{count}")
            self._entries[i] = (at, seq, job, lives)
        self.jobs = [entry[2] for entry in self._entries]

    def placements_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(PLACEMENT_COLUMNS)
        rows = [
            (life.started, life.pod.name, job.id, life)
            for _, _, job, lives in self._entries
            for life in lives
            if life.started is not None
        ]
        for started, name, jid, life in sorted(rows, key=lambda r: (r[0], r[1])):
            at = self.window.at
            writer.writerow(
                (
                    jid,
                    name,
                    life.pod.node_name,
                    ",".join(map(str, life.gpus or ())),
                    life.gpu_milli,
                    at(self.window.clip(started)),
                    "" if life.ended is None else at(life.ended),
                    life.pod.scheduler_name,
                )
            )
        return buffer.getvalue()

    def recording_json(self) -> str:
        window = self.window
        return recording_json(self.began_s, window.at(window.end), window.origin)


def _incarnations(lives: list[PodLife]) -> list[list[PodLife]]:
    """A job's pods by incarnation: a pod the controller evicts comes back as a copy
    with one more `gpufleet.io/restarts` (and the same job id)."""
    runs: dict[int, list[PodLife]] = {}
    for life in lives:
        runs.setdefault(life.pod.meta.restarts, []).append(life)
    return [runs[restarts] for restarts in sorted(runs)]


def _submitted(pod: PodRecord) -> float:
    """When a pod already there when recording began arrived (the controller's rule)."""
    return pod.created if pod.meta.submit_time is None else pod.meta.submit_time


def _bound_at(obj: Mapping[str, Any], pod: PodRecord) -> float:
    """When a pod already bound when recording began was bound: our Binding's record,
    else the API server's PodScheduled condition (whole seconds), else its start."""
    if pod.meta.bound_at is not None:
        return pod.meta.bound_at
    status = obj.get("status") or {}
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            stamp = _time(condition.get("lastTransitionTime"))
            if stamp is not None:
                return stamp
    return _time(status.get("startTime")) or pod.created


def _finished_at(obj: Mapping[str, Any]) -> float | None:
    """When a pod that had ended when recording began ended: its last container's end."""
    ends = [
        _time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for c in (obj.get("status") or {}).get("containerStatuses") or ()
    ]
    known = [t for t in ends if t is not None]
    return max(known) if known else None


def _time(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = parse_time(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _name(node: NodeRecord) -> str:
    return node.name
