"""Continual-training runs: one retraining job per stream window, deadlines, accuracy.

A `ContinualRun` drives a `Simulation`: at each window opening it applies the stream's
drift, asks the policy for the window's retraining config (if the policy is a
`WindowPlanner`, else the stream's default), and submits the window's job; at the
deadline it withdraws a job that has not finished (status `expired`, a miss). A completed
job deploys its model (see `policies.continual` for the accuracy model). Accuracy is
integrated exactly between these events, so nothing is sampled or ticked.

Outputs beside the usual run files: `streams.parquet` (one row per stream window) and
the summary keys `mean_accuracy`, `deadline_miss_rate` and the `retrain_*` figures.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from policies import JobSpec, NodeSpec, Policy, Snapshot
from policies.continual import (
    RETRAIN_KIND,
    StreamSpec,
    WindowOpening,
    WindowPlanner,
    window_info,
)
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
)
"""`status`: completed, expired (missed its deadline), rejected (fits no node) or
unfinished (the run stopped first). `gpu_s` is the GPU-seconds the window's job got."""

_DEADLINE, _OPEN = 0, 1  # at one instant, deadlines are settled before windows open
_FINISH_EPS = 1e-9


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


@dataclass
class _Stream:
    """A stream's deployed model (anchored accuracy) and its integrated accuracy."""

    spec: StreamSpec
    shifts: np.ndarray
    anchor_acc: float
    anchor_t: float
    clock: float
    integral: float = 0.0
    window_integral: float = 0.0
    window: _Window | None = None

    def accuracy(self, t: float) -> float:
        return self.spec.curve.decayed(self.anchor_acc, t - self.anchor_t)

    def advance(self, t: float) -> None:
        if t > self.clock:
            served = self.spec.curve.integral(self.accuracy(self.clock), t - self.clock)
            self.integral += served
            self.window_integral += served
            self.clock = t


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
        self.sim = Simulation(self.nodes, self.batch_jobs, self.policy, self.options, self.progress)
        self.sim.expect_arrivals(sum(s.windows for s in self.streams))
        self.sim.recorder.end_listeners.append(self._on_job_end)
        self._state = {
            s.id: _Stream(
                s, s.drift.shifts(s.windows, s.drift_seed), s.start_accuracy, s.start_s, s.start_s
            )
            for s in self.streams
        }
        self._planner = self.policy if isinstance(self.policy, WindowPlanner) else None

    def run(self) -> Recorder:
        self.sim.env.process(self._windows())
        recorder = self.sim.run()
        for state in self._state.values():
            if state.window is not None:  # the horizon stopped the run mid-window
                self._close(state, self.sim.env.now)
        return recorder

    def summary(self) -> dict[str, float | int]:
        accuracy_s = sum(s.integral for s in self._state.values())
        served_s = sum(s.clock - s.spec.start_s for s in self._state.values())
        return continual_summary(self.rows, accuracy_s, served_s)

    # -- window events ------------------------------------------------------------------

    def _windows(self) -> simpy.events.ProcessGenerator:
        events: list[tuple[float, int, int, str]] = []
        for s in self.streams:
            for k in range(s.windows):
                start = s.window_start(k)
                heapq.heappush(events, (start, _OPEN, k, s.id))
                heapq.heappush(events, (start + s.deadline_s, _DEADLINE, k, s.id))
            heapq.heappush(events, (s.end_s, _OPEN, s.windows, s.id))
        env = self.sim.env
        while events:
            now = events[0][0]
            if now > env.now:
                yield env.timeout(now - env.now)
            openings: list[WindowOpening] = []
            while events and events[0][0] == now:
                _, kind, index, stream_id = heapq.heappop(events)
                state = self._state[stream_id]
                if kind == _DEADLINE:
                    self._deadline(state, index)
                else:
                    opening = self._open(state, index, now)
                    if opening is not None:
                        openings.append(opening)
            if openings:
                self._submit(openings)

    def _open(self, state: _Stream, index: int, now: float) -> WindowOpening | None:
        """Close the previous window; open window `index` (none past the last)."""
        if state.window is not None:
            self._close(state, now)
        if index >= state.spec.windows:
            return None
        drop = float(state.shifts[index])
        state.anchor_acc = max(state.spec.curve.floor, state.accuracy(now) - drop)
        state.anchor_t = now
        deadline = now + state.spec.deadline_s
        state.window = _Window(index, now, deadline)
        state.window_integral = 0.0
        return WindowOpening(state.spec, index, state.anchor_acc)

    def _submit(self, openings: list[WindowOpening]) -> None:
        if self._planner is not None:
            choices = self._planner.plan_windows(openings, self._snapshot())
        else:
            choices = [o.stream.default_config for o in openings]
        for opening, choice in zip(openings, choices, strict=True):
            job = opening.stream.window_job(opening.index, choice, opening.acc_start)
            info = window_info(job)
            window = self._state[opening.stream.id].window
            assert info is not None and window is not None
            window.config, window.work, window.gain = info.config, job.work.total, info.gain
            window.acc_start = opening.acc_start
            if info.gain <= 0:
                self.sim.expect_arrivals(-1)  # at its ceiling: nothing to retrain
                continue
            window.status = "submitted"
            self.sim.submit(job)

    def _deadline(self, state: _Stream, index: int) -> None:
        window = state.window
        if window is None or window.index != index or window.status != "submitted":
            return
        job_id = state.spec.window_job_id(index)
        running = self.sim.running.get(job_id)
        if running is not None and running.finish_time() <= self.sim.env.now + _FINISH_EPS:
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
        mean = state.window_integral / span if span > 0 else state.accuracy(now)
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
        if status == "completed":
            window.end = now
            state.advance(now)
            # The new model learned the opening's data, so it ages from the opening.
            state.anchor_acc = info.acc_start + info.gain
            state.anchor_t = info.start

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
