"""Continual-training runs: one retraining job per stream window, deadlines, accuracy.

The window lifecycle (periodic or cron clock, deadlines, the deployed model, trigger
timing) is `policies.windows`, which the controller's ContinualTrainingJob reconciler
calls too.
A `ContinualRun` drives a `Simulation`: at each window opening it applies the stream's
drift, asks the policy for the window's retraining config (if the policy is a
`WindowPlanner`, else the stream's default), and submits the window's job; at the
deadline it withdraws a job that has not finished (status `expired`, a miss). A completed
job deploys its model (see `policies.continual` for the accuracy model). Accuracy is
integrated exactly between these events, so nothing is sampled or ticked.

A drift-triggered stream (`StreamSpec.trigger`) opens a retraining window instead at the
instant its accuracy reaches the trigger's threshold (computed in closed form from the
decay, or at a shift), one at a time and at least `min_gap_s` apart; its windows only
pace the shifts. At every window boundary the host also re-plans inference shares: the
policy's split if it is an `InferencePlanner`, else every stream's full demand, held as
reservations on the GPUs (slowest for retraining first) that retraining cannot use,
until the stream's last window ends.

Outputs beside the usual run files: `streams.parquet` (one row per stream window) and
the summary keys `mean_accuracy`, `deadline_miss_rate` and the `retrain_*` figures.

Over 500 lines because window openings, deadlines, triggers, inference reservations and
exact accuracy integration are one event-driven host sharing one run's state.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from policies import JobSpec, NodeSpec, Policy, Snapshot
from policies.continual import (
    RETRAIN_KIND,
    InferencePlanner,
    Serving,
    StreamSpec,
    WindowOpening,
    WindowPlanner,
    inference_models,
    window_info,
)
from policies.reservations import reserve_gpu
from policies.windows import DeployedModel, Window, meets_deadline, trigger_time
from simulator.engine import EngineOptions, ProgressHook, Simulation
from simulator.metrics import JOB_COLUMNS, TIMELINE_COLUMNS, Recorder
from simulator.run import RunConfig, staged_directory, write_json, write_table
from simulator.state import JobRun

STREAM_COLUMNS = (
    "stream_id",
    "window",
    "start_s",
    "deadline_s",
    "config",
    "work_gpu_s",
    "gain",
    "acc_start",
    "acc_end",
    "mean_acc",
    "status",
    "end_s",
    "jct_s",
    "gpu_s",
    "restarts",
    "gpu_models",
    "replicas",
)
"""`status`: completed, expired (missed its deadline), rejected (fits no node) or
unfinished (the run stopped first). `gpu_s` is the GPU-seconds the window's job got,
`replicas` the most GPUs (tasks: pods live) it held at once."""

# At one instant deadlines are settled first, then window boundaries (openings, shifts),
# then drift triggers.
_DEADLINE, _EPOCH, _TRIGGER = 0, 1, 2
_Event = tuple[float, int, int, str, int]
"""(time, kind, window or boundary index, stream id, trigger version)."""


@dataclass
class _Window:
    """The open window of one stream and what became of its job."""

    index: int
    start: float
    deadline: float
    config: str = ""
    work: float = 0.0
    gain: float = 0.0
    acc_start: float = 0.0
    status: str = "none"
    end: float | None = None
    gpu_s: float = 0.0
    restarts: int = 0
    models: str = ""
    replicas: int = 0


@dataclass
class _Stream:
    """A stream's deployed model (`policies.windows.DeployedModel`), its inference grant
    and its integrated accuracy (delivered: the model's times the serving quality)."""

    spec: StreamSpec
    shifts: np.ndarray
    model: DeployedModel
    clock: float
    schedule: list[Window]
    """The windows its clock opens (`StreamSpec.clock`), and the boundary closing the last."""
    integral: float = 0.0
    model_integral: float = 0.0
    grant_integral: float = 0.0
    window_integral: float = 0.0
    window: _Window | None = None
    grant: int = 0
    reservation: tuple[int, int] | None = None
    """(node, GPU) holding the inference grant."""
    last_trigger: float = float("-inf")
    trigger_version: int = 0
    triggers: int = 0
    busy: bool = False
    """A triggered retraining is outstanding (no new trigger until it ends)."""
    shifts_since: list[tuple[float, float]] = field(default_factory=list)
    """Shifts since the outstanding trigger, replayed on the model it deploys."""

    @property
    def began(self) -> float:
        """The first opening, from which the stream serves (and the controller tracks a
        CTJ's model)."""
        return self.schedule[0].start

    @property
    def quality(self) -> float:
        return self.spec.serving_quality(self.grant)

    def accuracy(self, t: float) -> float:
        return self.model.accuracy(t)

    def advance(self, t: float) -> None:
        if t > self.clock:
            model = self.spec.curve.integral(self.accuracy(self.clock), t - self.clock)
            served = model * self.quality
            self.integral += served
            self.model_integral += model
            self.window_integral += served
            if self.spec.inference_milli:
                self.grant_integral += self.grant / self.spec.inference_milli * (t - self.clock)
            self.clock = t

    def deploy(self, acc: float, data_t: float, now: float) -> None:
        """Deploy a model that had `acc` on the data of `data_t`, then replay the shifts
        that came after that data."""
        self.model.deploy(acc, data_t, now, tuple(self.shifts_since))
        self.shifts_since.clear()


@dataclass(frozen=True)
class ContinualResult:
    summary: dict[str, Any]
    recorder: Recorder
    windows: list[tuple[object, ...]]
    out_dir: Path | None = None


@dataclass
class ContinualRun:
    """One replay of `streams` (plus ordinary `batch_jobs`) on `nodes` under `policy`."""

    nodes: Sequence[NodeSpec]
    streams: Sequence[StreamSpec]
    policy: Policy
    batch_jobs: Sequence[JobSpec] = ()
    options: EngineOptions = field(default_factory=EngineOptions)
    progress: ProgressHook | None = None
    rows: list[tuple[object, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        ids = [s.id for s in self.streams]
        if len(set(ids)) != len(ids):
            raise ValueError("stream ids must be unique")
        options = replace(self.options, epoch_s=self._epoch())
        self.sim = Simulation(self.nodes, self.batch_jobs, self.policy, options, self.progress)
        # A triggered stream's job count is unknown: one arrival stays announced per
        # stream until its last trigger could fire, so round timers keep going.
        self.sim.expect_arrivals(sum(1 if s.trigger else s.windows for s in self.streams))
        self.sim.recorder.end_listeners.append(self._on_job_end)
        self._state = {s.id: self._initial(s) for s in self.streams}
        self._planner = self.policy if isinstance(self.policy, WindowPlanner) else None
        self._splitter = self.policy if isinstance(self.policy, InferencePlanner) else None
        cluster = self.sim.cluster.state
        self._inference_order = inference_models(self.streams, cluster.gpu_models)
        self._events: list[_Event] = []
        self._sleeping_until: float | None = None
        self._process: simpy.Process | None = None

    def _epoch(self) -> float:
        """Unix time of the run's zero: the streams' `epoch_s` (a replayed recording's
        origin), so that rounds fall where the controller's did, else the options'."""
        epochs = {s.epoch_s for s in self.streams if s.epoch_s}
        if self.options.epoch_s:
            epochs.add(self.options.epoch_s)
        if len(epochs) > 1:
            raise ValueError(f"streams' epoch_s differ ({sorted(epochs)}): a run has one clock")
        return epochs.pop() if epochs else 0.0

    @staticmethod
    def _initial(spec: StreamSpec) -> _Stream:
        shifts = spec.drift.shifts(spec.windows, spec.drift_seed)
        openings = spec.clock().openings()
        schedule = [next(openings) for _ in range(spec.windows + 1)]
        began = schedule[0].start
        model = DeployedModel.initial(spec.curve, spec.start_accuracy, began)
        return _Stream(spec, shifts, model, began, schedule)

    def run(self) -> Recorder:
        self._process = self.sim.env.process(self._windows())
        recorder = self.sim.run()
        for state in self._state.values():
            if state.window is not None:  # the horizon stopped the run mid-window
                self._close(state, self.sim.env.now)
        return recorder

    def summary(self) -> dict[str, float | int]:
        states = self._state.values()
        accuracy_s = sum(s.integral for s in states)
        served_s = sum(s.clock - s.began for s in states)
        summary = continual_summary(self.rows, accuracy_s, served_s)
        serving = [s for s in states if s.spec.inference_milli]
        summary["mean_model_accuracy"] = (
            sum(s.model_integral for s in states) / served_s if served_s > 0 else 0.0
        )
        serving_s = sum(s.clock - s.began for s in serving)
        summary["inference_grant_share"] = (
            sum(s.grant_integral for s in serving) / serving_s if serving_s > 0 else 1.0
        )
        return summary

    # -- window events ------------------------------------------------------------------

    def _windows(self) -> simpy.events.ProcessGenerator:
        for state in self._state.values():
            for window in state.schedule:  # the last boundary closes the stream
                self._push((window.start, _EPOCH, window.index, state.spec.id, 0))
        env = self.sim.env
        while self._events:
            now = self._events[0][0]
            if now > env.now:
                self._sleeping_until = now
                try:
                    yield env.timeout(now - env.now)
                except simpy.Interrupt:
                    continue  # an earlier trigger was armed meanwhile
                finally:
                    self._sleeping_until = None
            self._instant(now)

    def _instant(self, now: float) -> None:
        """Settle every event at `now`; openings are planned and submitted together."""
        openings: list[WindowOpening] = []
        boundary: list[_Stream] = []
        while self._events and self._events[0][0] == now:
            _, kind, index, stream_id, version = heapq.heappop(self._events)
            state = self._state[stream_id]
            if kind == _DEADLINE:
                self._deadline(state, index)
            elif kind == _EPOCH:
                opening = self._boundary(state, index, now)
                if opening is not None:
                    openings.append(opening)
                if index < state.spec.windows:
                    boundary.append(state)
                else:  # the stream has ended: its serving share is freed
                    self._reserve(state, 0)
            elif version == state.trigger_version:
                openings.append(self._trigger(state, now))
        self._serve([s for s in boundary if s.spec.inference_milli], openings)
        if openings:
            self._submit(openings)

    def _push(self, event: _Event) -> None:
        heapq.heappush(self._events, event)
        until = self._sleeping_until
        if until is not None and event[0] < until and self._process is not None:
            self._sleeping_until = None  # one wake-up is enough: the loop re-reads the heap
            self._process.interrupt()

    def _boundary(self, state: _Stream, index: int, now: float) -> WindowOpening | None:
        if state.spec.trigger is None:
            return self._open(state, index, now)
        state.advance(now)
        if index >= state.spec.windows:
            self._end_triggers(state, now)
            return None
        drop = float(state.shifts[index])
        if drop > 0:
            state.model.shift(now, drop)
            if state.busy:
                state.shifts_since.append((now, drop))
        self._arm(state, now)
        return None

    def _open(self, state: _Stream, index: int, now: float) -> WindowOpening | None:
        """Close the previous window; open window `index` (none past the last)."""
        if state.window is not None:
            self._close(state, now)
        if index >= state.spec.windows:
            return None
        state.model.shift(now, float(state.shifts[index]))
        window = state.schedule[index]
        state.window = _Window(index, now, window.deadline)
        state.window_integral = 0.0
        self._push((window.deadline, _DEADLINE, index, state.spec.id, 0))
        # A cron window is valued over its own length, as the controller values it.
        spec = state.spec if state.spec.cron is None else state.spec.for_window(window)
        return WindowOpening(spec, index, state.model.anchor_acc)

    # -- drift triggers -------------------------------------------------------------------

    def _arm(self, state: _Stream, now: float) -> None:
        """Schedule the stream's next trigger (replacing any armed one): when accuracy
        reaches the threshold, but not within `min_gap_s` of the last trigger, and only
        if its deadline falls before the stream ends."""
        spec = state.spec
        if spec.trigger is None or state.busy:
            return
        state.trigger_version += 1
        at = trigger_time(
            spec.trigger, state.model, now, state.last_trigger, spec.deadline_s, spec.end_s
        )
        if at is not None:
            self._push((at, _TRIGGER, state.triggers, spec.id, state.trigger_version))

    def _trigger(self, state: _Stream, now: float) -> WindowOpening:
        """Open a retraining window at `now` (closing the previous one)."""
        state.advance(now)
        if state.window is not None:
            self._close(state, now)
        index = state.triggers
        state.triggers += 1
        state.last_trigger = now
        state.busy = True
        state.window = _Window(index, now, now + state.spec.deadline_s)
        state.window_integral = 0.0
        self._push((now + state.spec.deadline_s, _DEADLINE, index, state.spec.id, 0))
        return WindowOpening(state.spec, index, state.accuracy(now))

    def _end_triggers(self, state: _Stream, now: float) -> None:
        state.trigger_version += 1  # disarm
        if state.window is not None:
            self._close(state, now)
        self.sim.expect_arrivals(-1)

    def _retrain_ended(self, state: _Stream, now: float) -> None:
        if state.spec.trigger is not None:
            state.busy = False
            state.shifts_since.clear()
            self._arm(state, now)

    # -- inference shares -----------------------------------------------------------------

    def _serve(self, streams: list[_Stream], openings: list[WindowOpening]) -> None:
        """Re-plan the inference grants of `streams` at a window boundary."""
        if not streams:
            return
        now = self.sim.env.now
        for state in streams:
            state.advance(now)
        if self._splitter is None:
            grants = [s.spec.inference_milli for s in streams]
        else:
            for state in streams:  # the planner splits everything inference holds
                self._reserve(state, 0)
            serving = [Serving(s.spec, s.accuracy(now)) for s in streams]
            grants = self._splitter.plan_inference(serving, openings, self._snapshot())
        for state, grant in zip(streams, grants, strict=True):
            self._reserve(state, grant)

    def _reserve(self, state: _Stream, grant: int) -> None:
        """Hold `grant` milli-GPU for the stream's inference on one GPU (tightest fit,
        slowest GPU model for retraining first); if none has room, what the roomiest GPU
        has. Reservations are the host's, not jobs: policies see the GPU as partly taken."""
        if grant == state.grant and (state.reservation is not None or grant == 0):
            return
        cluster = self.sim.cluster.state
        if state.reservation is not None:
            node, gpu = state.reservation
            cluster.release(node, (gpu,), state.grant, 0, 0)
            state.reservation, state.grant = None, 0
        held = reserve_gpu(cluster, self._inference_order, grant)
        if held is not None:
            node, gpu, granted = held
            cluster.allocate(node, (gpu,), granted, 0, 0)
            state.reservation, state.grant = (node, gpu), granted

    def _submit(self, openings: list[WindowOpening]) -> None:
        if self._planner is not None:
            choices = self._planner.plan_windows(openings, self._snapshot())
        else:
            choices = [o.stream.default_config for o in openings]
        now = self.sim.env.now
        for opening, choice in zip(openings, choices, strict=True):
            state = self._state[opening.stream.id]
            job = opening.stream.window_job(
                opening.index, choice, opening.acc_start, start=now, serving=state.quality
            )
            info = window_info(job)
            window = state.window
            assert info is not None and window is not None
            window.config, window.work, window.gain = info.config, job.work.total, info.gain
            window.acc_start = opening.acc_start
            triggered = opening.stream.trigger is not None
            if info.gain <= 0:  # at its ceiling: nothing to retrain
                if triggered:
                    self._retrain_ended(state, now)
                else:
                    self.sim.expect_arrivals(-1)
                continue
            if triggered:
                self.sim.expect_arrivals(1)  # the stream's standing announcement stays
            window.status = "submitted"
            self.sim.submit(job)

    def _deadline(self, state: _Stream, index: int) -> None:
        window = state.window
        if window is None or window.index != index or window.status != "submitted":
            return
        job_id = state.spec.window_job_id(index)
        running = self.sim.running.get(job_id)
        if running is not None and meets_deadline(running.finish_time(), self.sim.env.now):
            # It finishes at this very instant: settle it as completed before the window
            # closes, whatever order simpy gives the two same-time events.
            self.sim.cancel(job_id, "completed")
        else:
            self.sim.cancel(job_id, "expired")

    def _close(self, state: _Stream, now: float) -> None:
        state.advance(now)
        window = state.window
        assert window is not None
        span = now - window.start
        mean = state.window_integral / span if span > 0 else state.accuracy(now) * state.quality
        jct = None if window.end is None else window.end - window.start
        self.rows.append(
            (
                state.spec.id,
                window.index,
                window.start,
                window.deadline,
                window.config,
                window.work,
                window.gain,
                window.acc_start,
                state.accuracy(now),
                mean,
                window.status,
                window.end,
                jct,
                window.gpu_s,
                window.restarts,
                window.models,
                window.replicas,
            )
        )
        state.window = None

    def _on_job_end(self, job: JobRun, status: str) -> None:
        info = window_info(job.spec) if job.spec.kind == RETRAIN_KIND else None
        if info is None:
            return
        state = self._state[info.stream_id]
        window = state.window
        if window is None or window.index != info.index:
            return
        now = self.sim.env.now
        window.status = status
        window.gpu_s = job.attained_gpu_s
        window.restarts = job.restarts
        window.models = ",".join(sorted(job.models_used))
        window.replicas = job.max_gpus
        if status == "completed":
            window.end = now
            state.advance(now)
            # The new model learned the opening's data, so it ages from the opening.
            state.deploy(info.acc_start + info.gain, info.start, now)
        if status != "unfinished":
            self._retrain_ended(state, now)

    def _snapshot(self) -> Snapshot:
        sim = self.sim
        return Snapshot(
            cluster=sim.cluster.state.view(),
            running=[j.view() for j in sim.running.values()],
            pending=[j.view() for j in sim.pending.values()],
            now=sim.env.now,
        )


def continual_summary(
    rows: Sequence[tuple[object, ...]], accuracy_s: float, served_s: float
) -> dict[str, float | int]:
    """Cluster-wide continual figures from the per-window rows and the accuracy-seconds
    served over `served_s` stream-seconds."""
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    status = [r[col["status"]] for r in rows]
    jobs = [s for s in status if s != "none"]
    completed = status.count("completed")
    jct = np.array([_f(r[col["jct_s"]]) for r in rows if r[col["status"]] == "completed"])
    gpu_hours = sum(_f(r[col["gpu_s"]]) for r in rows) / 3600.0
    end_acc = [_f(r[col["acc_end"]]) for r in rows]
    return {
        "streams": len({r[col["stream_id"]] for r in rows}),
        "windows": len(rows),
        "mean_accuracy": accuracy_s / served_s if served_s > 0 else 0.0,
        "window_end_accuracy": float(np.mean(end_acc)) if end_acc else 0.0,
        "deadline_miss_rate": (len(jobs) - completed) / len(jobs) if jobs else 0.0,
        "retrain_jobs": len(jobs),
        "retrain_completed": completed,
        "retrain_gpu_hours": gpu_hours,
        "retrain_gpu_hours_per_window": gpu_hours / len(rows) if rows else 0.0,
        "retrain_avg_jct_s": float(jct.mean()) if jct.size else 0.0,
    }


def _f(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def simulate_continual(
    config: RunConfig,
    nodes: Sequence[NodeSpec],
    streams: Sequence[StreamSpec],
    policy: Policy,
    batch_jobs: Sequence[JobSpec] = (),
    out_dir: str | Path | None = None,
    progress: ProgressHook | None = None,
) -> ContinualResult:
    """Run streams (and batch jobs) through `policy`; write outputs when `out_dir` is set."""
    options = EngineOptions(
        seed=config.seed,
        restart_cost_s=config.restart_cost_s,
        horizon_s=config.horizon_s if config.horizon_s is not None else float("inf"),
    )
    run = ContinualRun(nodes, streams, policy, batch_jobs, options, progress)
    recorder = run.run()
    summary = {
        "policy": config.policy,
        "trace": config.trace,
        "cluster": config.cluster,
        "seed": config.seed,
        "gpus": run.sim.cluster.state.total_gpus,
        **recorder.summary(),
        **run.summary(),
        "scheduling_passes": run.sim.pass_count,
    }
    written = None
    if out_dir is not None:
        resolved = {**config.__dict__, "policy_config": policy.describe()}
        written = Path(out_dir)
        with staged_directory(written) as stage:
            write_table(stage / "jobs.parquet", JOB_COLUMNS, recorder.jobs)
            models = run.sim.cluster.models
            columns = (*TIMELINE_COLUMNS, *(f"gpus_{m}" for m in models))
            write_table(stage / "timeline.parquet", columns, recorder.timeline)
            write_table(stage / "streams.parquet", STREAM_COLUMNS, run.rows)
            write_json(stage / "config.json", resolved)
            write_json(stage / "summary.json", summary)
    return ContinualResult(summary, recorder, run.rows, written)


def accuracy_over_time(rows: Sequence[tuple[object, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(window opening time, mean window accuracy over the streams open then)."""
    if not rows:
        return np.zeros(0), np.zeros(0)
    starts = np.array([_f(r[2]) for r in rows])
    means = np.array([_f(r[9]) for r in rows])
    times, inverse = np.unique(starts, return_inverse=True)
    sums = np.bincount(inverse, weights=means)
    counts = np.bincount(inverse)
    return times, sums / counts
