"""What to do for one ContinualTrainingJob now: a pure function of the object, the pods
it owns and the time, so the reconciler is level-triggered (the same inputs always give
the same plan, and running a plan twice changes nothing the second time).

Per window:

* while it is open and before its deadline, its retraining pods exist (one per replica,
  named `<ctj>-w<index>-<replica>`, a gang under `scheduling.x-k8s.io/pod-group`);
* it is *completed* when every replica succeeded by the deadline, and *missed* when the
  deadline passes first or the window went by with no pods at all (the controller was
  down); a replica that fails before the deadline is retried (`RETRY_DELAY_S` later the
  window's pods are withdrawn and recreated); the unfinished pods of a missed window are
  withdrawn (the stale model keeps serving, as in `policies.continual`);
* outcomes are recorded in order in the status (`windowsRecorded` is the high-water
  mark, so nothing is counted twice), and finished pods are kept for the last
  `historyLimit` recorded windows only.

Over 500 lines because reading a CTJ's pods, judging its windows and writing its pods
and status are one pure function; split, the window rules would span three files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from controller.ctj.continual import (
    AT_CEILING,
    WINDOW_FACTS,
    ConfigChooser,
    ctj_clock,
    deploy,
    model_status,
    tracked_model,
    triggered,
    window_facts,
)
from controller.ctj.crd import (
    ACC_START,
    ACCURACY,
    API_VERSION,
    GAIN,
    GPU_MEMORY_MIB,
    KIND,
    MAX_REPLICAS,
    NAME_LABEL,
    PHASE_COMPLETED,
    PHASE_INVALID,
    PHASE_PENDING,
    PHASE_RETRAINING,
    PHASE_WAITING,
    THROUGHPUT,
    WINDOW_DEADLINE,
    WINDOW_END,
    WINDOW_LABEL,
    WINDOW_START,
    WORK_GPU_S,
    Condition,
    Ctj,
    CtjStatus,
    PodPlacement,
    WindowOutcome,
)
from controller.kube.objects import (
    GANG_SIZE,
    GPU_MILLI,
    GPU_MODELS,
    GPU_RESOURCE,
    POD_GROUP_LABEL,
    PREEMPTIBLE,
    SUBMIT_TIME,
    Problem,
    parse_time,
    pod_from_json,
)
from policies import MILLI
from policies.windows import (
    COMPLETED,
    MISSED,
    DeployedModel,
    Window,
    settle,
)

HISTORY = 5
"""Window outcomes kept in the status."""
RETRY_DELAY_S = 10.0
"""A failed replica's window is retried this long after the failure (a crash loop makes
one attempt per delay, not one per API round trip), until its deadline."""
RETRAINING = "Retraining"
DEADLINE_MET = "DeadlineMet"
SCHEDULE_VALID = "ScheduleValid"


@dataclass(frozen=True, slots=True)
class CtjPod:
    """A retraining pod as the reconciler sees it."""

    namespace: str
    name: str
    uid: str
    window: int
    owner_uid: str
    phase: str
    node: str
    gpus: str
    gpu_milli: int
    deleting: bool
    deadline: float | None
    finished_at: float | None
    unschedulable: str = ""
    start: float | None = None
    acc_start: float | None = None
    gain: float | None = None
    facts: tuple[tuple[str, str], ...] = ()
    """The window's accuracy-fact annotations, fixed at its opening (`WindowFacts`)."""

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    @property
    def failed(self) -> bool:
        return self.phase == "Failed"

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed


def ctj_pod_from_json(obj: Mapping[str, Any]) -> CtjPod | None:
    """None for a pod without our window label."""
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if not labels.get(WINDOW_LABEL, "").isdigit():
        return None
    status = obj.get("status") or {}
    decoded = pod_from_json(obj)
    return CtjPod(
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        window=int(labels[WINDOW_LABEL]),
        owner_uid=_controller_uid(meta.get("ownerReferences") or ()),
        phase=status.get("phase", ""),
        node=(obj.get("spec") or {}).get("nodeName", ""),
        gpus=",".join(map(str, decoded.meta.assigned_gpus or ())),
        gpu_milli=decoded.meta.assigned_milli,
        deleting=bool(meta.get("deletionTimestamp")),
        deadline=_seconds(annotations.get(WINDOW_DEADLINE)),
        finished_at=_finished_at(status),
        unschedulable=_unschedulable(status),
        start=_seconds(annotations.get(WINDOW_START)),
        acc_start=_seconds(annotations.get(ACC_START)),
        gain=_seconds(annotations.get(GAIN)),
        facts=tuple((k, str(annotations[k])) for k in WINDOW_FACTS if k in annotations),
    )


def _seconds(text: str | None) -> float | None:
    """A time we wrote as Unix seconds; None if absent or no longer readable."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _controller_uid(owners: Iterable[Mapping[str, Any]]) -> str:
    for owner in owners:
        if owner.get("kind") == KIND and owner.get("controller"):
            return str(owner.get("uid", ""))
    return ""


def _finished_at(status: Mapping[str, Any]) -> float | None:
    """When the last container terminated (as the kubelet, or KWOK, reports it)."""
    ends = [
        parse_time(s["state"]["terminated"].get("finishedAt"))
        for s in status.get("containerStatuses") or ()
        if (s.get("state") or {}).get("terminated")
    ]
    ends = [e for e in ends if e > 0]
    return max(ends) if ends else None


def _unschedulable(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message", ""))
    return ""


@dataclass(frozen=True)
class Plan:
    create: tuple[dict[str, Any], ...]
    delete: tuple[CtjPod, ...]
    status: CtjStatus
    recorded: tuple[WindowOutcome, ...]
    """Outcomes recorded by this plan (for events and metrics)."""
    requeue_at: float | None
    problem: Problem | None = None
    """Why the CTJ cannot be acted on (its status then says so)."""


@dataclass
class _Tally:
    """The status's running totals while windows are being recorded."""

    recorded: int
    completed: int
    missed: int
    last_retrain: float | None
    history: list[WindowOutcome]
    model: DeployedModel | None
    new: list[WindowOutcome] = field(default_factory=list)

    def add(self, outcome: WindowOutcome, pods: Sequence[CtjPod] = ()) -> None:
        self.recorded = outcome.index + 1
        if outcome.completed:
            self.completed += 1
            if outcome.finished_at is not None:
                self.last_retrain = max(self.last_retrain or 0.0, outcome.finished_at)
                deploy(self.model, pods, outcome.finished_at)
        else:
            self.missed += 1
        self.history = [*self.history, outcome][-HISTORY:]
        self.new.append(outcome)

    def skip_to(self, index: int) -> None:
        """Windows recorded..index-1 went by without pods: all missed."""
        gap = index - self.recorded
        if gap <= 0:
            return
        self.missed += gap
        for i in range(max(self.recorded, index - HISTORY), index):
            outcome = WindowOutcome(i, MISSED, "NotStarted")
            self.history = [*self.history, outcome][-HISTORY:]
            self.new.append(outcome)
        self.recorded = index


def plan(
    ctj: Ctj,
    pods: Sequence[CtjPod],
    now: float,
    scheduler_name: str,
    choose: ConfigChooser | None = None,
) -> Plan:
    """The pods to create and delete, the status to write and when to look again.
    `choose` picks an opening window's retraining config (the policy's, if it plans
    windows); without it every window runs the first config."""
    own = [p for p in pods if p.owner_uid == ctj.uid]
    # Pods of an earlier object of the same name (the garbage collector may lag).
    stale = tuple(p for p in pods if p.owner_uid not in ("", ctj.uid) and not p.deleting)
    if ctj.problem is not None:
        return _invalid(ctj, own, stale, ctj.problem, now, "InvalidSpec")
    try:
        clock = ctj_clock(ctj.spec.retrain, ctj.created)
        first_opening = clock.first_opening()
        if ctj.spec.retrain.trigger is None:
            window, next_trigger = clock.current(now, ctj.status.current_window), None
        else:
            window, next_trigger = triggered(ctj, first_opening, now)
    except ValueError as err:
        return _invalid(ctj, own, stale, Problem("spec.retrain", str(err)), now)
    limit = ctj.spec.retrain.windows
    if window is None:
        closed_before = ctj.status.windows_recorded
    elif limit is not None and window.index >= limit:
        closed_before, window = limit, None
    else:
        closed_before = window.index
    by_window: dict[int, list[CtjPod]] = {}
    for pod in own:
        by_window.setdefault(pod.window, []).append(pod)
    tally = _record_closed(ctj, by_window, closed_before, now, first_opening)
    create: list[dict[str, Any]] = []
    withdrawn: tuple[CtjPod, ...] = ()
    retry_at: float | None = None
    if window is not None and window.index >= tally.recorded:
        current = by_window.get(window.index, [])
        outcome = _judge(window.index, current, ctj.spec.min_replicas, window.deadline, now)
        facts = None if current or outcome else window_facts(ctj, window, tally.model, choose)
        if outcome is not None:
            tally.add(outcome, current)
        elif facts is not None and facts.gain <= 0:
            tally.add(WindowOutcome(window.index, COMPLETED, AT_CEILING))
        else:
            # A replica recreated (after a preemption) carries the facts of its window.
            notes = facts.annotations() if facts is not None else _facts_of(current)
            create = _missing_pods(ctj, window, current, scheduler_name, notes)
            withdrawn, retry_at = _retry(current, now)
    requeue_at = _requeue_at(window, tally.recorded, limit, first_opening, now, next_trigger)
    return Plan(
        create=tuple(create),
        delete=stale + _to_delete(own, tally.recorded, ctj.spec.history_limit) + withdrawn,
        status=_status(ctj, window, tally, by_window, now),
        recorded=tuple(tally.new),
        requeue_at=min((t for t in (requeue_at, retry_at) if t is not None), default=None),
    )


def _retry(pods: Sequence[CtjPod], now: float) -> tuple[tuple[CtjPod, ...], float | None]:
    """A replica that failed before its window's deadline is retried: `RETRY_DELAY_S`
    after the failure the window's pods are withdrawn (a gang runs whole), and the CTJ
    recreates them. Returns the pods to withdraw now, or when to look again."""
    failures = [p.finished_at or now for p in pods if p.failed and not p.deleting]
    if not failures:
        return (), None
    retry_at = max(failures) + RETRY_DELAY_S
    if now < retry_at:
        return (), retry_at
    return tuple(p for p in pods if not p.deleting), None


def _record_closed(
    ctj: Ctj,
    by_window: Mapping[int, list[CtjPod]],
    closed_before: int,
    now: float,
    first_opening: float,
) -> _Tally:
    """Record every window before `closed_before` that has no outcome yet."""
    old = ctj.status
    tally = _Tally(
        old.windows_recorded,
        old.completed_windows,
        old.missed_deadlines,
        old.last_retrain,
        list(old.history),
        tracked_model(ctj, first_opening),
    )
    for index in sorted(i for i in by_window if tally.recorded <= i < closed_before):
        tally.skip_to(index)
        pods = by_window[index]
        tally.add(_judge_closed(index, pods, ctj.spec.min_replicas, now), pods)
    tally.skip_to(closed_before)
    return tally


def _requeue_at(
    window: Window | None,
    recorded: int,
    limit: int | None,
    first_opening: float,
    now: float,
    next_trigger: float | None,
) -> float | None:
    if limit is not None and recorded >= limit:
        return None
    if window is None:
        if next_trigger is not None:
            return next_trigger
        return first_opening if first_opening > now else None
    if recorded > window.index:
        # A triggered window is armed again as soon as the last one is settled.
        return now if next_trigger is not None else window.end
    return window.deadline


def _judge_closed(index: int, pods: list[CtjPod], replicas: int, now: float) -> WindowOutcome:
    deadline = min((p.deadline for p in pods if p.deadline is not None), default=now)
    outcome = _judge(index, pods, replicas, deadline, max(now, deadline))
    assert outcome is not None  # judged at or after its deadline
    return outcome


def _judge(
    index: int, pods: list[CtjPod], replicas: int, deadline: float, now: float
) -> WindowOutcome | None:
    """The window's outcome by `policies.windows.settle` on its pods; None while open."""
    live = [p for p in pods if not p.deleting or p.finished]
    failed = now >= deadline and any(p.failed for p in live)  # before it: retried
    done = [p for p in live if p.succeeded]
    finished = None
    # Every pod counts, those the scheduler added to grow the window too.
    if len(done) >= max(replicas, len(live)):
        finished = max(p.finished_at if p.finished_at is not None else now for p in done)
    verdict = settle(deadline, now, finished, failed)
    if verdict is None:
        return None
    if verdict == COMPLETED:
        return WindowOutcome(index, COMPLETED, "RetrainedInTime", finished)
    if failed:
        return WindowOutcome(index, MISSED, "PodFailed")
    if finished is not None:
        return WindowOutcome(index, MISSED, "FinishedLate", finished)
    if not pods:
        return WindowOutcome(index, MISSED, "NotStarted")
    if any(not p.node for p in pods):
        return WindowOutcome(index, MISSED, "Unschedulable")
    return WindowOutcome(index, MISSED, "DeadlinePassed")


def _to_delete(pods: list[CtjPod], recorded: int, history_limit: int) -> tuple[CtjPod, ...]:
    """Unfinished pods of recorded windows (withdrawn) and finished pods older than
    the kept history."""
    return tuple(
        p
        for p in pods
        if not p.deleting
        and p.window < recorded
        and (not p.finished or p.window < recorded - history_limit)
    )


def _facts_of(pods: Sequence[CtjPod]) -> dict[str, str]:
    return dict(next((p.facts for p in pods if p.facts), ()))


def _missing_pods(
    ctj: Ctj,
    window: Window,
    present: list[CtjPod],
    scheduler_name: str,
    notes: Mapping[str, str],
) -> list[dict[str, Any]]:
    names = {p.name for p in present}
    wanted = (pod_name(ctj.name, window.index, r) for r in range(ctj.spec.min_replicas))
    return [
        retraining_pod(ctj, window, replica, scheduler_name, notes)
        for replica, name in enumerate(wanted)
        if name not in names
    ]


def pod_name(ctj_name: str, window: int, replica: int) -> str:
    return f"{ctj_name}-w{window}-{replica}"


def retraining_pod(
    ctj: Ctj,
    window: Window,
    replica: int,
    scheduler_name: str,
    notes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Replica `replica` of window `window`: owned by the CTJ (so the garbage collector
    removes it with the CTJ), placed by `scheduler_name`, never restarted in place.
    `notes` are the window's accuracy facts (`controller.ctj.continual`)."""
    spec = ctj.spec
    labels = {**spec.pod_labels, NAME_LABEL: ctj.name, WINDOW_LABEL: str(window.index)}
    annotations = {
        **spec.pod_annotations,
        **_window_annotations(window),
        **_hints(ctj),
        **(notes or {}),
    }
    # One replica is a group of one whether or not it is a gang; in its group the
    # scheduler can grow the window (`controller.scheduling.growth`).
    if spec.gang or spec.min_replicas == 1:
        labels[POD_GROUP_LABEL] = f"{ctj.name}-w{window.index}"
        annotations[GANG_SIZE] = str(spec.min_replicas)
    pod_spec: dict[str, Any] = {
        "schedulerName": scheduler_name,
        "restartPolicy": "Never",
        "containers": [_container(ctj, window)],
    }
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.priority_class:
        pod_spec["priorityClassName"] = spec.priority_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(ctj.name, window.index, replica),
            "namespace": ctj.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": ctj.name,
                    "uid": ctj.uid,
                    "controller": True,
                }
            ],
        },
        "spec": pod_spec,
    }


def _window_annotations(window: Window) -> dict[str, str]:
    return {
        SUBMIT_TIME: f"{window.start:.3f}",
        WINDOW_START: f"{window.start:.3f}",
        WINDOW_DEADLINE: f"{window.deadline:.3f}",
        WINDOW_END: f"{window.end:.3f}",
    }


def _hints(ctj: Ctj) -> dict[str, str]:
    """What policies may use: GPU share and models, elasticity, accuracy curve."""
    spec = ctj.spec
    hints = {PREEMPTIBLE: str(spec.preemptible).lower(), MAX_REPLICAS: str(spec.max_replicas)}
    if spec.gpu.milli < MILLI:
        hints[GPU_MILLI] = str(spec.gpu.milli)
    if spec.gpu.memory_mib is not None:
        hints[GPU_MEMORY_MIB] = str(spec.gpu.memory_mib)
    if spec.gpu_types:
        hints[GPU_MODELS] = "|".join(sorted(spec.gpu_types))
        hints[THROUGHPUT] = ",".join(f"{m}={v:g}" for m, v in sorted(spec.gpu_types.items()))
    if spec.accuracy is not None:
        curve = spec.accuracy
        values = (curve.ceiling, curve.floor, curve.decay_per_h, curve.half_gain_gpu_s)
        hints[ACCURACY] = ",".join(f"{v:g}" for v in values)
    if spec.configs:
        hints[WORK_GPU_S] = f"{spec.configs[0].work_gpu_s:g}"
    return hints


def _container(ctj: Ctj, window: Window) -> dict[str, Any]:
    spec = ctj.spec
    env = {
        "GPUFLEET_CTJ": ctj.name,
        "GPUFLEET_WINDOW_INDEX": str(window.index),
        "GPUFLEET_WINDOW_START": f"{window.start:.0f}",
        "GPUFLEET_WINDOW_DEADLINE": f"{window.deadline:.0f}",
    }
    if spec.model_uri:
        env["GPUFLEET_MODEL_URI"] = spec.model_uri
    if spec.data_source:
        env["GPUFLEET_DATA_SOURCE"] = spec.data_source
    env.update(spec.env)
    container: dict[str, Any] = {
        "name": "retrain",
        "image": spec.image,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory},
            "limits": {GPU_RESOURCE: str(spec.gpu.count)},
        },
    }
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    return container


def _status(
    ctj: Ctj,
    window: Window | None,
    tally: _Tally,
    by_window: Mapping[int, list[CtjPod]],
    now: float,
) -> CtjStatus:
    old = ctj.status
    limit = ctj.spec.retrain.windows
    if limit is not None and tally.recorded >= limit:
        phase = PHASE_COMPLETED
    elif window is None:
        phase = PHASE_PENDING
    elif tally.recorded > window.index:
        phase = PHASE_WAITING
    else:
        phase = PHASE_RETRAINING
    shown = window or old.current_window
    bound = sorted(
        (p for p in by_window.get(shown.index, ()) if p.node) if shown else (),
        key=lambda p: p.name,
    )
    conditions = [_retraining_condition(phase, window)]
    if tally.history:
        conditions.append(_deadline_condition(tally.history[-1]))
    return CtjStatus(
        phase=phase,
        observed_generation=ctj.generation,
        current_window=shown,
        windows_recorded=tally.recorded,
        completed_windows=tally.completed,
        missed_deadlines=tally.missed,
        last_retrain=tally.last_retrain,
        placements=tuple(PodPlacement(p.name, p.node, p.gpus, p.gpu_milli) for p in bound),
        history=tuple(tally.history),
        conditions=tuple(_stamped(c, old.condition(c.type), now) for c in conditions),
        model=model_status(tally.model),
        observed=old.observed,
    )


def _retraining_condition(phase: str, window: Window | None) -> Condition:
    if phase == PHASE_RETRAINING and window is not None:
        return Condition(RETRAINING, "True", "WindowOpen", f"retraining window {window.index}")
    return Condition(RETRAINING, "False", phase, "")


def _deadline_condition(latest: WindowOutcome) -> Condition:
    if latest.completed:
        return Condition(DEADLINE_MET, "True", latest.reason, f"window {latest.index} retrained")
    message = f"window {latest.index} missed its deadline"
    return Condition(DEADLINE_MET, "False", latest.reason, message)


def _stamped(condition: Condition, old: Condition | None, now: float) -> Condition:
    """Keep the old transition time while the condition's state is unchanged."""
    since = old.last_transition if old is not None and condition.same_state(old) else now
    return replace(condition, last_transition=since)


def _invalid(
    ctj: Ctj,
    own: list[CtjPod],
    stale: tuple[CtjPod, ...],
    problem: Problem,
    now: float,
    reason: str = "InvalidSchedule",
) -> Plan:
    """Set aside: no window opens and no outcome is recorded until the spec is fixed.
    Pods of the window that was open keep running (nothing is lost), but only until the
    deadline they carry, as any window's pods: past it they are withdrawn, so a CTJ
    made invalid mid-window cannot hold GPUs for ever."""
    old = ctj.status
    condition = Condition(SCHEDULE_VALID, "False", reason, str(problem))
    status = replace(
        old,
        phase=PHASE_INVALID,
        observed_generation=ctj.generation,
        conditions=(_stamped(condition, old.condition(SCHEDULE_VALID), now),),
    )
    running = [p for p in own if not p.finished and not p.deleting]
    late = tuple(p for p in running if p.deadline is not None and p.deadline <= now)
    later = [p.deadline for p in running if p.deadline is not None and p.deadline > now]
    return Plan((), stale + late, status, (), min(later, default=None), problem)
