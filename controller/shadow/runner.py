"""Shadow policies: other policies asked on the live policy's own snapshots, never bound.

After each live decision the scheduler hands its snapshot and result to `offer`, on the
hot path, which only keeps them in a one-snapshot slot (copying the cluster arrays, a
few microseconds; the live view is valid only until the next bind). A worker task takes
the newest snapshot from the slot and sends it to a child process that asks every
shadow policy: the child has its own interpreter lock and core, so pure-Python policy
code never stalls the live loop (in a thread it took half the loop's time while it ran).
The child keeps a copy of the last snapshot it was sent, and the worker sends only what
changed since (`controller.shadow.mirror`: pickling whole snapshots held the live
process's interpreter lock ~100 ms each at 500 nodes and 4,500 jobs, an update ~10 ms),
with the live decisions reduced to what the verdicts compare. A snapshot replaced
before the worker took it is *dropped* and counted: under load shadows see fewer
snapshots, the live loop never waits. After an evaluation taking `d` seconds the worker
rests `max(interval_s, busy_ratio · d)`, so shadows use a bounded share of a core, and
the child runs at a lower CPU priority (niceness +10), so that share is what the live
path leaves idle.

Per shadow and evaluation: decisions that differ from the live policy's (per job: the
same placement, preemption or wait), the fragmentation the cluster would have after the
shadow's placements (FGD's measure against the snapshot's own jobs, % of GPU capacity),
and the queueing delay so far of the jobs it would leave waiting. Each evaluation is one
JSON line of the shadow log (`controller.shadow.log` reads it). A shadow of the live
policy decides exactly as it does unless the policy draws random numbers or keeps state
between passes (it then sees only the snapshots it evaluates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import numpy as np

from controller.shadow.mirror import (
    MirrorOutOfStep,
    SnapshotMirror,
    SnapshotSender,
    SnapshotUpdate,
)
from policies import (
    ClusterState,
    Context,
    Decision,
    Place,
    Policy,
    Preempt,
    Resize,
    SchedulingResult,
    Snapshot,
)
from policies.fragmentation import cluster_fragmentation
from policies.target_workload import TargetWorkload, live_workload

log = logging.getLogger(__name__)

LivePlan = Mapping[str, tuple[object, ...]]
"""Per job what the live policy told it (`live_plan`), all a verdict compares."""


@dataclass(frozen=True)
class ShadowOptions:
    policies: tuple[Policy, ...]
    log_path: Path | None = None
    interval_s: float = 1.0
    """Evaluate at most this often."""
    busy_ratio: float = 4.0
    """Rest this many times an evaluation's duration after it (≤ 1/(1+ratio) of a core)."""
    seed: int = 0


@dataclass
class ShadowStats:
    evaluations: int = 0
    decisions: int = 0
    differing: int = 0
    errors: int = 0
    fragmentation_pct: float = 0.0
    waiting: int = 0
    queueing_delay_s: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """One shadow's answer on one snapshot."""

    policy: str
    at: float
    pending: int
    decisions: int
    differing: int
    placed: int
    fragmentation_pct: float
    waiting: int
    queueing_delay_s: float


class ShadowJudge:
    """The shadow policies and their random generators, wherever they run."""

    def __init__(
        self, policies: Sequence[Policy], seed: int, contained: type[BaseException] = Exception
    ) -> None:
        self.policies = tuple(policies)
        self.contexts = {p.name: Context(np.random.default_rng(seed)) for p in policies}
        self.contained = contained
        """What a shadow may raise and cost only its verdict (in the child: anything,
        even `SystemExit`, which the pool would carry back and raise in the controller)."""

    def judge(self, snapshot: Snapshot, live: LivePlan) -> tuple[list[Verdict], dict[str, str]]:
        """Verdicts of the shadows that answered, and why the others failed."""
        jobs = [*snapshot.running, *snapshot.pending]
        workload = live_workload(jobs) if jobs else None  # no jobs: nothing to fragment
        verdicts, failed = [], {}
        for policy in self.policies:
            # A shadow's bug, or a decision no host could carry out (a node that does not
            # exist), costs its verdict, never the shadows' task and with it the process.
            try:
                result = policy.schedule(snapshot, self.contexts[policy.name])
                verdicts.append(_judge(policy.name, snapshot, live, result, workload))
            except self.contained as err:
                failed[policy.name] = repr(err)
        return verdicts, failed


REPORTED_CAUSES = 100
"""Distinct failure causes logged in full; past that every failure is logged again (a
bound on what the runner remembers, not on what it reports)."""
SHADOW_NICENESS = 10
"""How much lower the shadow child's CPU priority is than the controller's."""
_JUDGE: list[tuple[ShadowJudge, SnapshotMirror]] = []
"""The judge of a shadow worker process and its copy of the live snapshot, set once by
its initializer."""


def _start_judge(policies: Sequence[Policy], seed: int) -> None:
    # Below the live process in the CPU's queue: on a machine with few cores the child
    # otherwise takes a core the live loop, the API server or etcd was about to use.
    os.nice(SHADOW_NICENESS)
    _JUDGE[:] = [(ShadowJudge(policies, seed, BaseException), SnapshotMirror())]


def _judge_in_worker(
    update: SnapshotUpdate, live: LivePlan
) -> tuple[list[Verdict], dict[str, str]]:
    judge, mirror = _JUDGE[0]
    return judge.judge(mirror.apply(update), live)


class ShadowRunner:
    def __init__(self, options: ShadowOptions, live_policy: str = "") -> None:
        self.options = options
        self.live_policy = live_policy
        self.offered = 0
        self.dropped = 0
        """Snapshots replaced in the slot before the worker took them."""
        self.stats = {p.name: ShadowStats() for p in options.policies}
        self.judge = ShadowJudge(options.policies, options.seed)
        self.sender = SnapshotSender()
        self._slot: tuple[Snapshot, SchedulingResult] | None = None
        self._ready = asyncio.Event()
        self._log: IO[str] | None = None
        self._reported: set[str] = set()
        """Failure causes already logged."""

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.options.policies]

    def offer(self, snapshot: Snapshot, result: SchedulingResult) -> None:
        """The live pass's snapshot and decisions (called on the hot path)."""
        self.offered += 1
        if self._slot is not None:
            self.dropped += 1
        self._slot = (replace(snapshot, cluster=snapshot.cluster.copy()), result)
        self._ready.set()

    async def run(self) -> None:
        """The worker; cancel it to stop. Shadows decide in a child process of their own
        (its own interpreter lock: pure-Python policy code never stalls the event
        loop). This task never ends by itself. A child that dies is replaced; whatever
        else fails (a snapshot that cannot be sent, a shadow or the child raising, a
        verdict that cannot be logged) costs the snapshot at hand, counted as the error
        of every shadow it cost and logged once per cause. Either way the next snapshot
        goes to the child whole."""
        pool = self._pool()
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._slot is None:
                    continue
                snapshot, live = self._slot
                self._slot = None
                started = time.perf_counter()
                try:
                    verdicts = await self._judged(pool, snapshot, live)
                except BrokenProcessPool:
                    log.error("the shadow worker process died; starting another")
                    self.sender.reset()
                    pool.shutdown(wait=False)
                    pool = self._pool()
                except MirrorOutOfStep as err:
                    log.warning("shadow snapshot copy out of step (%s); sending it whole", err)
                    self._resend(snapshot, live)
                    continue
                except Exception as err:
                    self._lost("a snapshot could not be judged; the next goes whole", err)
                else:
                    await self._log_verdicts(verdicts)
                spent = time.perf_counter() - started
                await asyncio.sleep(max(self.options.interval_s, self.options.busy_ratio * spent))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            self._close_log()

    async def _judged(
        self, pool: ProcessPoolExecutor, snapshot: Snapshot, live: SchedulingResult
    ) -> list[Verdict]:
        """The shadows' verdicts on `snapshot`, judged in the child."""
        update = self.sender.update(snapshot)
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(pool, _judge_in_worker, update, live_plan(live))
        self.sender.confirm(update)
        return self._record(*answer)

    def _lost(self, what: str, err: BaseException) -> None:
        """An evaluation lost before any shadow answered: every shadow's error, and the
        child's copy is no longer trusted."""
        self.sender.reset()
        for stats in self.stats.values():
            stats.errors += 1
        self._report(what, err)

    def _report(self, what: str, err: BaseException | str) -> None:
        """Log a failure with its cause the first time that cause is seen; repeats are
        counted in the metrics only (a failure that recurs every second must not flood
        the controller's log)."""
        cause = f"{what}: {err!r}"
        if cause in self._reported:
            log.debug("%s (again)", cause)
            return
        if len(self._reported) < REPORTED_CAUSES:
            self._reported.add(cause)
        trace = err if isinstance(err, BaseException) else None
        log.error("%s (repeats are counted in gpufleet_shadow_errors)", cause, exc_info=trace)

    def _resend(self, snapshot: Snapshot, live: SchedulingResult) -> None:
        """Send `snapshot` again, whole, unless a newer one waits already."""
        self.sender.reset()
        if self._slot is None:
            self._slot = (snapshot, live)
            self._ready.set()

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_judge,
            initargs=(self.options.policies, self.options.seed),
        )

    async def _log_verdicts(self, verdicts: list[Verdict]) -> None:
        """Append to the shadow log, opened (again) when needed. A log that cannot be
        opened or written (a missing directory, a full disk) costs each verdict's line,
        counted as its shadow's error; the shadows go on and the next try opens it
        anew."""
        path = self.options.log_path
        if path is None or not verdicts:
            return
        try:
            if self._log is None:
                self._log = await asyncio.to_thread(path.open, "a", encoding="utf-8")
            await asyncio.to_thread(_append, self._log, verdicts, self.live_policy)
        except Exception as err:
            self._close_log()
            for verdict in verdicts:
                self.stats[verdict.policy].errors += 1
            self._report(f"shadow log {path} cannot be written", err)

    def _close_log(self) -> None:
        handle, self._log = self._log, None
        if handle is not None:
            # Closing flushes: on a full disk that fails for lines already counted lost.
            with contextlib.suppress(OSError):
                handle.close()

    def evaluate(self, snapshot: Snapshot, live: SchedulingResult) -> list[Verdict]:
        """Every shadow on `snapshot` in this process (tests; `run` uses its worker)."""
        return self._record(*self.judge.judge(snapshot, live_plan(live)))

    def _record(self, verdicts: list[Verdict], failed: dict[str, str]) -> list[Verdict]:
        for name, error in failed.items():
            self.stats[name].errors += 1
            self._report(f"shadow policy {name} failed", error)
        for verdict in verdicts:
            stats = self.stats[verdict.policy]
            stats.evaluations += 1
            stats.decisions += verdict.decisions
            stats.differing += verdict.differing
            stats.fragmentation_pct = verdict.fragmentation_pct
            stats.waiting = verdict.waiting
            stats.queueing_delay_s = verdict.queueing_delay_s
        return verdicts


def _judge(
    name: str,
    snapshot: Snapshot,
    live: LivePlan,
    result: SchedulingResult,
    workload: TargetWorkload | None,
) -> Verdict:
    mine = _decisions_by_job(result.decisions)
    jobs = set(live) | set(mine)
    differing = sum(live.get(j, ("wait",)) != mine.get(j, ("wait",)) for j in jobs)
    placed = [d for d in result.decisions if isinstance(d, Place)]
    after = _placed_state(snapshot, placed)
    amount = cluster_fragmentation(after, workload)[0] if workload is not None else 0.0
    started = {d.job_id for d in placed}
    waits = [snapshot.now - v.queued_since for v in snapshot.pending if v.id not in started]
    return Verdict(
        policy=name,
        at=snapshot.now,
        pending=len(snapshot.pending),
        decisions=len(jobs),
        differing=differing,
        placed=len(placed),
        fragmentation_pct=round(amount, 4),
        waiting=len(waits),
        queueing_delay_s=round(float(np.mean(waits)), 3) if waits else 0.0,
    )


def live_plan(result: SchedulingResult) -> dict[str, tuple[object, ...]]:
    """What a verdict compares of the live decisions, made in the live process: a dict
    of tuples pickles at C speed (the decisions themselves took 5-8 ms for 1,500 jobs)."""
    return _decisions_by_job(result.decisions)


def _decisions_by_job(decisions: Sequence[Decision]) -> dict[str, tuple[object, ...]]:
    """Per job what it is told: its placement, a preemption, or (absent) to wait."""
    out: dict[str, tuple[object, ...]] = {}
    for d in decisions:
        if isinstance(d, Place | Resize):
            tasks = tuple((t.node, t.gpus, t.gpu_milli) for t in d.placement.tasks)
            out[d.job_id] = (type(d).__name__, tasks)
        elif isinstance(d, Preempt):
            out[d.job_id] = ("Preempt",)
    return out


def _placed_state(snapshot: Snapshot, placed: Sequence[Place]) -> ClusterState:
    """A copy of the snapshot's cluster with the placements made (every shadow must see
    the snapshot as the live policy did)."""
    state = snapshot.cluster.copy()
    specs = {view.id: view.spec for view in snapshot.pending}
    for decision in placed:
        spec = specs.get(decision.job_id)
        for task in decision.placement.tasks:
            request = task.request or (spec.task if spec is not None else None)
            cpu = request.cpu_milli if request is not None else 0
            mem = request.mem_mib if request is not None else 0
            try:
                state.allocate(state.node_index[task.node], task.gpus, task.gpu_milli, cpu, mem)
            except ValueError:
                continue  # an infeasible shadow decision: the live host would refuse it too
    return state


def _append(handle: IO[str], verdicts: Sequence[Verdict], live: str) -> None:
    for v in verdicts:
        handle.write(json.dumps({"live_policy": live, **v.__dict__}, sort_keys=True) + "\n")
    handle.flush()
