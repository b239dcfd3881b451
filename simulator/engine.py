"""The discrete-event engine: simpy drives time, our arrays hold the state.

Events at one timestamp are ordered (time, kind, sequence): arrivals and completions
first, in the order they were scheduled, then exactly one scheduling pass, which sees
every same-time change. Event-driven policies get a pass after any change while jobs
wait; round-based policies get one every `round_s` seconds. A policy may also ask to be
woken at a given time (`SchedulingResult.wake_at`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import simpy

from policies import (
    ClusterState,
    Context,
    FixedDuration,
    JobSpec,
    JobStatus,
    NodeSpec,
    Place,
    Placement,
    PlacementError,
    Policy,
    Preempt,
    Resize,
    SchedulingResult,
    Snapshot,
)
from policies.base import request_key
from policies.placement import fits_empty_cluster
from policies.task_mix import TaskMix
from simulator.metrics import OCCUPANT, Recorder
from simulator.state import JobRun, JobViews, SimCluster
from traces.canonical import Pin, pin_of

ProgressHook = Callable[[int], None]
"""Called with the number of jobs finished (completed or rejected) so far."""


@dataclass(frozen=True)
class EngineOptions:
    seed: int = 0
    restart_cost_s: float = 30.0
    """Restart delay for jobs whose spec gives none (Sia's default restart cost)."""
    horizon_s: float = math.inf
    """Stop the clock here; jobs still pending or running are reported unfinished."""
    startup_delay: bool = False
    """Charge the restart delay on a job's first start too (checkpoint-restore jobs pay
    it on every launch, as the Sia and Pollux simulators model)."""
    stop_after: frozenset[str] = frozenset()
    """End the run once every one of these jobs has completed (a measurement window of a
    continuous trace, as Gavel's simulator ends); the rest are reported unfinished."""
    epoch_s: float = 0.0
    """Unix time of the clock's zero. Rounds fall on the Unix clock's multiples of the
    policy's `round_s`, as the controller's do: a replay of a recording whose zero is off
    that grid decides at the instants the controller decided at."""


class Simulation:
    """One replay of `jobs` on `nodes` under `policy`. Call `run()` once."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        jobs: Iterable[JobSpec],
        policy: Policy,
        options: EngineOptions | None = None,
        progress: ProgressHook | None = None,
    ) -> None:
        self.options = options or EngineOptions()
        self.policy = policy
        self.cluster = SimCluster(ClusterState(sorted(nodes, key=lambda n: n.name)))
        self._cluster_view = self.cluster.state.view()  # shares the arrays: serves every pass
        self.jobs = sorted(jobs, key=lambda j: j.submit_time)
        self.env = simpy.Environment()
        self.ctx = Context(np.random.default_rng(self.options.seed))
        self.recorder = Recorder(capacity_milli=max(1, self.cluster.state.total_gpus * 1000))
        self.pending: dict[str, JobRun] = {}
        self.running: dict[str, JobRun] = {}
        self.task_mix = TaskMix()  # tasks per shape of pending and running, for snapshots
        self._progress = progress
        self._pass_requested = False
        self._wake_at: float | None = None
        self._arrivals_left = len(self.jobs)
        self._empty = ClusterState(self.cluster.state.nodes)
        self._next_seq = len(self.jobs)
        self.pass_count = 0
        self._stuck = False
        self._window = set(self.options.stop_after)
        self._has_agents = False
        self._fits_memo: dict[tuple[object, ...], bool] = {}
        self.occupants: dict[str, JobRun] = {}
        """Pinned jobs holding their node now (`traces.canonical.Pin`); no policy sees them."""
        for spec in self.jobs:
            self._check_pin(spec)

    # -- public -------------------------------------------------------------------

    def run(self) -> Recorder:
        self.env.process(self._arrivals())
        if self.policy.round_s is not None:
            self.env.process(self._rounds(self.policy.round_s))
        self.env.run(until=None if math.isinf(self.options.horizon_s) else self.options.horizon_s)
        for job in (*self.running.values(), *self.pending.values()):
            job.sync(self.env.now)
            self.recorder.on_job_end(job, "unfinished")
        for job in self.occupants.values():
            job.sync(self.env.now)
            self.recorder.on_job_end(job, OCCUPANT)
        return self.recorder

    def expect_arrivals(self, count: int) -> None:
        """Announce `count` jobs that a host will `submit` later, so round timers and the
        stuck check keep waiting for them."""
        self._arrivals_left += count

    def submit(self, spec: JobSpec) -> None:
        """Submit a job now, for hosts that create jobs as the run goes (one retraining
        job per window); it must have been announced with `expect_arrivals`."""
        self._arrive(spec, self._next_seq)
        self._next_seq += 1
        self._arrivals_left -= 1

    def cancel(self, job_id: str, status: str) -> JobRun | None:
        """Withdraw a pending or running job now (e.g. past its deadline) and record it
        with `status`; returns the job, or None if it is not waiting or running."""
        now = self.env.now
        job = self.pending.pop(job_id, None)
        if job is None:
            job = self.running.pop(job_id, None)
            if job is None:
                return None
            job.sync(now)
            self.cluster.unbind(job)
            job.epoch += 1  # its scheduled completion is now stale
            self._retime_disturbed(now)
        job.end = now
        self.task_mix.remove(job.spec)
        self.recorder.on_job_end(job, status)
        self._record()
        if self.policy.round_s is None and self.pending:
            self._request_pass()
        return job

    # -- event sources ------------------------------------------------------------------

    def _arrivals(self) -> simpy.events.ProcessGenerator:
        for seq, spec in enumerate(self.jobs):
            if spec.submit_time > self.env.now:
                yield self.env.timeout(spec.submit_time - self.env.now)
            self._arrive(spec, seq)
            self._arrivals_left -= 1

    def _rounds(self, round_s: float) -> simpy.events.ProcessGenerator:
        first = -self.options.epoch_s % round_s
        if first > 0:
            yield self.env.timeout(first)
        while self._arrivals_left or self.running or (self.pending and not self._stuck):
            self._request_pass()
            yield self.env.timeout(round_s)

    def _arrive(self, spec: JobSpec, seq: int) -> None:
        now = self.env.now
        self.recorder.on_submit(now)
        job = JobRun(spec=spec, seq=seq, queued_since=now)
        pin = pin_of(spec)
        if pin is not None:
            self._occupy(job, pin)
            return
        self._has_agents = self._has_agents or job.agent is not None
        if not self._fits_empty_cluster(spec):
            self.recorder.on_job_end(job, "rejected")
            return
        self.pending[spec.id] = job
        self.task_mix.add(spec)
        if self.policy.round_s is None:
            self._request_pass()

    def _check_pin(self, spec: JobSpec) -> None:
        pin = pin_of(spec)
        if pin is None:
            return
        if spec.replicas != 1 or not isinstance(spec.work, FixedDuration):
            raise ValueError(f"job {spec.id}: an occupant needs one task and a fixed duration")
        index = self.cluster.state.node_index.get(pin.node)
        if index is None:
            raise ValueError(f"job {spec.id}: pinned to node {pin.node!r}, not in the cluster")
        count = int(self.cluster.state.gpu_count[index])
        if pin.gpus and max(pin.gpus) >= count:
            raise ValueError(f"job {spec.id}: node {pin.node} has no GPU {max(pin.gpus)}")

    def _occupy(self, job: JobRun, pin: Pin) -> None:
        """Put an occupant where its trace pins it, without asking the policy, for its
        duration; it shows in the capacity and the timeline, never among the jobs."""
        now = self.env.now
        job.first_start = now
        job.placement = self.cluster.occupy(job, pin.node, pin.gpus)
        if job.placement is not None:  # else the controller would not count it either
            job.status = JobStatus.RUNNING
            job.rate = 1.0
            job.progress_since = job.service_since = now
            job.max_gpus = job.placement.num_gpus
            job.last_placement = describe_placement(job.placement)
        self.occupants[job.spec.id] = job
        leave = self.env.timeout(job.spec.work.total)
        leave.callbacks.append(functools.partial(self._vacate, job.spec.id))
        self._record()

    def _vacate(self, job_id: str, _event: simpy.Event) -> None:
        job = self.occupants.pop(job_id)
        now = self.env.now
        job.sync(now)
        job.end = now
        if job.placement is not None:
            self.cluster.unbind(job)
        self.recorder.on_job_end(job, OCCUPANT)
        self._record()
        if self.policy.round_s is None and self.pending:
            self._request_pass()

    def _fits_empty_cluster(self, spec: JobSpec) -> bool:
        key = request_key(spec)
        fits = self._fits_memo.get(key)
        if fits is None:
            fits = fits_empty_cluster(spec, self._empty)
            self._fits_memo[key] = fits
        return fits

    def _on_completion(self, job_id: str, epoch: int, _event: simpy.Event) -> None:
        self._complete(job_id, epoch)

    def _complete(self, job_id: str, epoch: int) -> None:
        job = self.running.get(job_id)
        if job is None or job.epoch != epoch:
            return  # stale: the job was preempted or resized since
        now = self.env.now
        job.sync(now)
        job.done = job.spec.work.total
        job.end = now
        self.cluster.unbind(job)
        del self.running[job_id]
        self.task_mix.remove(job.spec)
        self._retime_disturbed(now)
        self.recorder.on_job_end(job, "completed")
        self._record()
        if self._progress is not None:
            self._progress(len(self.recorder.jobs))
        if self._window and job_id in self._window:
            self._window.discard(job_id)
            if not self._window:  # simpy's run() ends at this event, as at its `until`
                self.env.timeout(0).callbacks.append(simpy.core.StopSimulation.callback)
        if self.policy.round_s is None and self.pending:
            self._request_pass()

    # -- scheduling pass ------------------------------------------------------------

    def _request_pass(self) -> None:
        if not self._pass_requested:
            self._pass_requested = True
            self.env.timeout(0).callbacks.append(self._pass)

    def _pass(self, _event: simpy.Event) -> None:
        if self.env.peek() <= self.env.now:
            # Same-time events are still queued: go after them (scheduling sorts last).
            self.env.timeout(0).callbacks.append(self._pass)
            return
        self._pass_requested = False
        now = self.env.now
        self.pass_count += 1
        self._refresh_agents(now)
        running, pending = JobViews(self.running), JobViews(self.pending)
        snapshot = Snapshot(
            cluster=self._cluster_view,
            running=running,
            pending=pending,
            now=now,
            task_mix=self.task_mix.counts(),
        )
        started = time.perf_counter()
        result = self.policy.schedule(snapshot, self.ctx)
        wall_s = time.perf_counter() - started
        self.recorder.on_pass(now, wall_s, len(running), len(pending), result)
        running.close()
        pending.close()
        self._apply(result, now)
        self._retime_disturbed(now)
        # Nothing runs, nothing will arrive and the policy placed nothing: waiting jobs
        # can never start, so round timers stop and the run ends with them unfinished.
        self._stuck = not self.running and not self.occupants and not self._arrivals_left
        self._record()
        self._schedule_wake(result.wake_at)

    def _schedule_wake(self, wake_at: float | None) -> None:
        now = self.env.now
        if wake_at is None or wake_at <= now:
            return
        if self._wake_at is not None and self._wake_at <= wake_at and self._wake_at > now:
            return
        # The instant simpy fires at (now + delay), which need not equal `wake_at` in
        # floating point: compared with `wake_at` itself, such a wake-up was dropped.
        self._wake_at = now + (wake_at - now)
        self.env.timeout(wake_at - now).callbacks.append(self._wake)

    def _wake(self, _event: simpy.Event) -> None:
        if self._wake_at == self.env.now:
            self._wake_at = None
            self._request_pass()

    def _apply(self, result: SchedulingResult, now: float) -> None:
        preempted = [p.job_id for p in result.decisions if isinstance(p, Preempt)]
        for job_id in preempted:
            self._preempt(job_id, now)
        if preempted:
            # Back in arrival order (FIFO policies need not sort): one sort a pass.
            self.pending = dict(sorted(self.pending.items(), key=lambda item: item[1].seq))
        resizes = [d for d in result.decisions if isinstance(d, Resize)]
        # Release every resized job first, so jobs may take each other's GPUs.
        for resize in resizes:
            job = self.running[resize.job_id]
            job.sync(now)
            self.cluster.unbind(job)
        for resize in resizes:
            self._resize(resize, now)
        for decision in result.decisions:
            if isinstance(decision, Place):
                self._start(decision, now)

    def _preempt(self, job_id: str, now: float) -> None:
        job = self.running.pop(job_id)
        job.sync(now)
        self.cluster.unbind(job)
        job.status = JobStatus.PENDING
        job.placement = job.shape = None
        job.queued_since = now
        job.epoch += 1
        job.restarts += 1
        job._view = None
        self.pending[job_id] = job  # `_apply` puts it back in arrival order

    def _start(self, decision: Place, now: float) -> None:
        job = self.pending.pop(decision.job_id)
        self._bind(job, decision.placement)
        restarting = job.first_start is not None or self.options.startup_delay
        if job.first_start is None:
            job.first_start = now
        self._run_on(job, decision.placement, now, restarting)

    def _resize(self, decision: Resize, now: float) -> None:
        """Move a job whose old placement `_apply` has already released."""
        job = self.running[decision.job_id]
        self._bind(job, decision.placement)
        job.restarts += 1
        self._run_on(job, decision.placement, now, restarting=True)

    def _bind(self, job: JobRun, placement: Placement) -> None:
        try:
            self.cluster.bind(job, placement)
        except PlacementError as err:
            # A policy bug: name the policy, not only the job and the rule.
            name = getattr(self.policy, "name", type(self.policy).__name__)
            raise PlacementError(f"policy {name}: {err}") from err

    def _run_on(self, job: JobRun, placement: Placement, now: float, restarting: bool) -> None:
        job.status = JobStatus.RUNNING
        job.placement = placement
        job.shape = self.cluster.shape_of(placement)
        job.models_used.add(job.shape.gpu_model)
        job.max_gpus = max(job.max_gpus, placement.num_gpus)
        job.last_placement = describe_placement(placement)
        job.rate = job.work_rate() * self.cluster.speed_factor(job)
        if job.rate <= 0:
            raise ValueError(f"job {job.spec.id} has no throughput on {job.shape.gpu_model}")
        delay = self._restart_cost(job) if restarting else 0.0
        job.progress_since = now + delay
        job.service_since = now
        job.epoch += 1
        job._view = None
        self.running[job.spec.id] = job
        self._schedule_completion(job, now)

    def _schedule_completion(self, job: JobRun, now: float) -> None:
        """Schedule the job's completion, or first the point where its rate changes."""
        finish = job.finish_time()
        change = job.change_at
        if change is not None and job.done < change < job.spec.work.total:
            at = job.progress_since + (change - job.done) / job.rate
            if at < finish:
                event = self.env.timeout(at - now)
                event.callbacks.append(
                    functools.partial(self._on_rate_change, job.spec.id, job.epoch, change)
                )
                return
        completion = self.env.timeout(finish - now)
        completion.callbacks.append(functools.partial(self._on_completion, job.spec.id, job.epoch))

    def _on_rate_change(self, job_id: str, epoch: int, change: float, _e: simpy.Event) -> None:
        job = self.running.get(job_id)
        if job is None or job.epoch != epoch:
            return  # stale: the job was preempted, resized or re-timed since
        now = self.env.now
        job.sync(now)
        job.done = max(job.done, change)  # land exactly on the change point
        self._retime(job, now)

    def _retime(self, job: JobRun, now: float) -> None:
        """Recompute a running job's rate at its current progress and reschedule."""
        job.rate = job.work_rate() * self.cluster.speed_factor(job)
        job.epoch += 1  # whatever was scheduled at the old rate is now stale
        job._view = None
        self._schedule_completion(job, now)

    def _refresh_agents(self, now: float) -> None:
        """Jobs that tune themselves (batch size) re-decide before every pass, as a job
        would between rounds; the policy then sees their latest hints."""
        if not self._has_agents:
            return
        for job in self.running.values():
            if job.agent is not None:
                job.sync(now)
                self._retime(job, now)

    def _retime_disturbed(self, now: float) -> None:
        """Re-time running jobs whose GPUs gained or lost another job's auxiliary part
        (a remote preprocessing part slows the jobs it shares a GPU with)."""
        for job_id in sorted(self.cluster.colocation.take_disturbed()):
            job = self.running.get(job_id)
            if job is None or job.shape is None:
                continue
            job.sync(now)
            rate = job.work_rate() * self.cluster.speed_factor(job)
            if rate == job.rate:
                continue
            job.rate = rate
            job.epoch += 1  # the completion scheduled at the old rate is now stale
            job._view = None
            self._schedule_completion(job, now)

    def _restart_cost(self, job: JobRun) -> float:
        return job.spec.restart_cost_s or self.options.restart_cost_s

    def _record(self) -> None:
        self.recorder.on_change(
            self.env.now,
            self.cluster.alloc_milli,
            len(self.running),
            len(self.pending),
            self.cluster.gpus_by_model(),
        )


def describe_placement(placement: Placement) -> str:
    """`node:gpu+gpu;node:gpu`, the form job records use."""
    return ";".join(f"{t.node}:{'+'.join(map(str, t.gpus))}" for t in placement.tasks)
