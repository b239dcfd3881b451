"""Run metrics: one flat row per job, one timeline row per change, written once.

Cluster-wide numbers are integrated as the run goes (allocated GPU-time) or computed from
the rows at the end; nothing is recomputed over the cluster after every event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from policies import Place, Preempt, Resize, SchedulingResult
from simulator.state import JobRun

JOB_COLUMNS = (
    "job_id",
    "kind",
    "submit_s",
    "start_s",
    "end_s",
    "jct_s",
    "queue_delay_s",
    "gpu_models",
    "gpus",
    "gpu_milli",
    "restarts",
    "attained_gpu_s",
    "status",
    "placement",
)
"""`placement` is the job's last placement as `node:gpu+gpu;node:gpu` (empty if never run)."""
OCCUPANT = "occupant"
"""Status of a trace's occupants (pinned pods no policy placed); `summary()` leaves them out."""
PASS_COLUMNS = ("time_s", "policy_wall_s", "running", "pending", "placed", "preempted", "resized")
"""One row per scheduling pass (round); followed by the policy's own `notes` keys."""
TIMELINE_COLUMNS = ("time_s", "alloc_gpu_pct", "running", "pending")
"""Followed by one `gpus_<model>` column per GPU model: GPUs allocated of that model."""


@dataclass
class Recorder:
    """Collects rows during a run; `summary()` derives the cluster-wide figures."""

    capacity_milli: int
    jobs: list[tuple[object, ...]] = field(default_factory=list)
    timeline: list[tuple[object, ...]] = field(default_factory=list)
    _alloc_integral: float = 0.0
    _alloc_now: int = 0
    _last_t: float | None = None
    first_submit: float | None = None
    last_end: float | None = None
    passes: list[tuple[object, ...]] = field(default_factory=list)
    pass_notes: list[dict[str, float]] = field(default_factory=list)
    end_listeners: list[Callable[[JobRun, str], None]] = field(default_factory=list)
    """Called with each job and its final status as it is recorded (hosts that keep
    per-job bookkeeping, e.g. accuracy of continual-training streams, hook in here)."""

    def on_change(
        self, now: float, alloc_milli: int, running: int, pending: int, by_model: tuple[float, ...]
    ) -> None:
        """Record the cluster after a change; same-time rows collapse into the last."""
        if self._last_t is not None:
            self._alloc_integral += self._alloc_now * (now - self._last_t)
        self._last_t = now
        self._alloc_now = alloc_milli
        row = (now, 100.0 * alloc_milli / self.capacity_milli, running, pending, *by_model)
        if self.timeline and self.timeline[-1][0] == now:
            self.timeline[-1] = row
        else:
            self.timeline.append(row)

    def on_pass(
        self, now: float, wall_s: float, running: int, pending: int, result: SchedulingResult
    ) -> None:
        """Record one scheduling pass: its wall time and what it decided."""
        counts = {Place: 0, Preempt: 0, Resize: 0}
        for decision in result.decisions:
            if type(decision) in counts:
                counts[type(decision)] += 1
        self.passes.append(
            (now, wall_s, running, pending, counts[Place], counts[Preempt], counts[Resize])
        )
        self.pass_notes.append(dict(result.notes))

    def on_submit(self, now: float) -> None:
        if self.first_submit is None:
            self.first_submit = now

    def on_job_end(self, job: JobRun, status: str) -> None:
        spec = job.spec
        end = job.end
        start = job.first_start
        if status == "completed" and end is not None:
            self.last_end = end if self.last_end is None else max(self.last_end, end)
        self.jobs.append(
            (
                spec.id,
                spec.kind,
                spec.submit_time,
                start,
                end,
                None if end is None else end - spec.submit_time,
                None if start is None else start - spec.submit_time,
                ",".join(sorted(job.models_used)),
                job.max_gpus,
                spec.task.gpu_milli,
                job.restarts,
                job.attained_gpu_s,
                status,
                job.last_placement,
            )
        )
        for listener in self.end_listeners:
            listener(job, status)

    def summary(self) -> dict[str, float | int]:
        rows = [row for row in self.jobs if row[12] != OCCUPANT]
        status = [row[12] for row in rows]
        jct = np.array([row[5] for row in rows if row[12] == "completed"], dtype=float)
        queue = np.array([row[6] for row in rows if row[6] is not None], dtype=float)
        start = self.first_submit or 0.0
        makespan = (self.last_end - start) if self.last_end is not None else 0.0
        util = self._alloc_integral / (self.capacity_milli * makespan) if makespan > 0 else 0.0
        return {
            "jobs": len(rows),
            "completed": status.count("completed"),
            "unfinished": status.count("unfinished"),
            "rejected": status.count("rejected"),
            "avg_jct_s": _stat(jct, np.mean),
            "p50_jct_s": _stat(jct, lambda a: np.percentile(a, 50)),
            "p99_jct_s": _stat(jct, lambda a: np.percentile(a, 99)),
            "avg_queue_delay_s": _stat(queue, np.mean),
            "makespan_s": float(makespan),
            "gpu_util": float(util),
            "restarts": int(sum(int(row[10]) for row in rows)),  # type: ignore[call-overload]
        }


def _stat(values: np.ndarray, fn: object) -> float:
    if values.size == 0:
        return 0.0
    return float(fn(values))  # type: ignore[operator]
