"""The scheduling loop: snapshot from the cache → the same policy object the simulator
runs → decisions carried out through the API.

Like kube-scheduler, a pass (the *scheduling cycle*) decides and assumes; binds (the
*binding cycle*) run concurrently afterwards, so the next pass never waits for the API
server. Passes run when something relevant changed. Round-based policies (`round_s`)
decide only on their timer; between rounds the loop only carries out their plans.

Semantics of decisions the simulator applies instantly but a cluster cannot:

* `Place`: assume every task, then bind every pod of the job. If a gang member's bind
  fails after others succeeded, the bound members are evicted and recreated (binding is
  irreversible), so the gang is all-or-nothing.
* `Preempt`: each pod of the job is deleted and recreated unbound, carrying the job id,
  submit time, attained service and restart count in annotations; it queues again. A
  pod with a controlling owner (a CTJ, a Job) is only deleted: its owner recreates it.
* `Resize`: like `Preempt`, and the new placement is remembered as a plan. Once the
  recreated pods are pending and the plan fits the ledger, they are bound to it. A
  `Preempt` and a `Place` of one job in one pass (a share reassigned) is a resize too.
* A placement with more tasks than an elastic job (a CTJ window) has pods: the missing
  pods are added to its pod group and the plan bound once they are all there
  (`controller.scheduling.growth`). A moved job's pods carry its restarts and service
  (and a retraining window its work done); a window that opts in to simulated runtime
  is bound with the runtime its allocation earns (`controller.ctj.runtime`).
* A `Place` that needs GPUs still held by pods being evicted in the same pass becomes a
  plan too, bound as soon as the evicted pods are gone.

Nothing one job does stops the loop that serves every other job. Pods the decoder could
not read are reported (FailedScheduling naming the field) and never reach the policy. A
policy that raises is asked again without the jobs it fails on (found by halving the
queue), and those jobs are reported. A decision that breaks the placement contract
(`policies.contract`) is refused and reported for its job alone.

Over 500 lines because the scheduling and binding cycles share the assume cache, the
plans and the eviction bookkeeping of one loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import aiohttp
import numpy as np

from controller.ctj.runtime import carried_work, granted_runtime, work_done
from controller.dra.allocator import ClaimOutcome, ClaimWriter
from controller.dra.inventory import ClaimAllocation
from controller.kube.objects import ATTAINED_GPU_S, RESTARTS, PodRecord, Problem
from controller.scheduling.cache import ClusterCache
from controller.scheduling.effects import ApiEffects, BindOutcome, placement_annotations
from controller.scheduling.growth import added_names, carried
from controller.scheduling.ledger import Charge
from controller.scheduling.quarantine import Quarantine
from controller.scheduling.workload import PendingJob, build_workload, job_id
from policies import (
    MILLI,
    ClusterState,
    Context,
    JobSpec,
    JobView,
    Place,
    Placement,
    Policy,
    Preempt,
    Resize,
    SchedulingResult,
    Snapshot,
    Unschedulable,
)
from policies.base import NO_NODE_FITS
from policies.continual import RETRAIN_KIND
from policies.contract import PlacementError, check_fits, check_shape
from policies.diagnosis import why_no_node_fits
from policies.placement import allocation_shape, take

log = logging.getLogger(__name__)

Clock = Callable[[], float]
REPORTED_PRUNE_AT = 10_000
EVENT_CONCURRENCY = 4
EVENT_BACKLOG = 1_000
DRA_OFF = (
    "this scheduler does not allocate claims (--no-dra, or the cluster does not serve "
    "resource.k8s.io/v1 to it)"
)


@dataclass(frozen=True)
class SchedulerOptions:
    seed: int = 0
    bind_concurrency: int = 32
    assume_timeout_s: float = 30.0
    round_s: float | None = None
    """Overrides the policy's own round length (None: the policy's)."""
    external_rounds: bool = False
    """Ask the policy only when `Scheduler.request_round` is called: no round timer, and
    a change alone carries out plans and binds but decides nothing. For a driver that
    replays a trace on its own clock (the simulator agreement test), so that both hosts
    decide at the same instants on the same snapshots."""
    report_unschedulable: bool = True
    min_pass_interval_s: float = 0.05
    """Passes start at most this often; changes in between are coalesced into the next
    pass (with thousands of running jobs a pass costs milliseconds, and one pass per
    watch event would fall behind)."""


@dataclass
class BindRecord:
    """One successful bind, for observers (tests, the recorder, metrics)."""

    pod: PodRecord
    node: str
    gpus: tuple[int, ...]
    gpu_milli: int
    at: float


@dataclass
class SchedulerStats:
    passes: int = 0
    bound: int = 0
    conflicts: int = 0
    expired: int = 0
    evicted: int = 0
    policy_errors: int = 0
    events_dropped: int = 0
    bind_retries: int = 0
    """Binds whose answer was unclear (no answer, 5xx) and were settled by re-reading."""


class Scheduler:
    def __init__(
        self,
        policy: Policy,
        cache: ClusterCache,
        effects: ApiEffects,
        options: SchedulerOptions | None = None,
        clock: Clock = time.time,
        quarantine: Quarantine | None = None,
        claims: ClaimWriter | None = None,
    ) -> None:
        self.policy = policy
        self.claims = claims
        """Writes DRA claims' allocations and reservations (None: DRA pods are not
        placed)."""
        self.cache = cache
        self.effects = effects
        self.options = options or SchedulerOptions()
        self.clock = clock
        self.quarantine = quarantine or Quarantine()
        self.ctx = Context(np.random.default_rng(self.options.seed))
        self.round_s = self.options.round_s or policy.round_s
        self.stats = SchedulerStats()
        self.on_bound: Callable[[BindRecord], None] = lambda _record: None
        self.on_pass: Callable[[SchedulingResult, float], None] = lambda _result, _seconds: None
        """Called after each policy decision with its result and wall seconds (metrics)."""
        self.on_decided: Callable[[Snapshot, SchedulingResult], None] | None = None
        """Called with each pass's snapshot and decisions before they are carried out
        (shadow policies: `controller.shadow`); must return at once."""
        self.may_bind: Callable[[], bool] = lambda: True
        """Checked before each pass and right before each bind: False while this replica
        is not the leader, so a replica that lost its lease binds nothing more."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._paused = False
        self._round_due = False
        self._round_at: float | None = None
        """The grid instant of the round the next pass decides (its snapshot's time)."""
        self._inflight: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(self.options.bind_concurrency)
        self._event_limit = asyncio.Semaphore(EVENT_CONCURRENCY)
        self._event_backlog = 0
        self._reported: dict[str, str] = {}
        self._plans: dict[str, Placement] = {}
        self._growing: dict[str, int] = {}
        """Elastic jobs being grown: job id → the pod count asked for."""
        self._moved: dict[str, dict[str, str]] = {}
        """Moved jobs: job id → the restarts and service their pods are bound with."""
        cache.on_change = self.wake

    # -- control ----------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()
        self._idle.clear()

    def pause(self) -> None:
        """Stop starting passes (the cache keeps updating); binds in flight finish."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self.wake()

    async def wait_idle(self) -> None:
        """Until no pass is due and no bind or report is in flight."""
        while not (self._idle.is_set() and not self._wake.is_set() and not self._inflight):
            self._idle.clear()
            await self._idle.wait()

    async def run(self) -> None:
        """The loop; cancel the task to stop it."""
        timers = [asyncio.create_task(self._expiry_timer())]
        if self.round_s is not None and not self.options.external_rounds:
            timers.append(asyncio.create_task(self._round_timer(self.round_s)))
        try:
            while True:
                await self._wake.wait()
                if self._paused:
                    self._wake.clear()
                    self._set_idle()
                    continue
                self._wake.clear()
                self.run_pass()
                self._set_idle()
                if self.options.min_pass_interval_s > 0:
                    await asyncio.sleep(self.options.min_pass_interval_s)
        finally:
            for timer in timers:
                timer.cancel()

    async def _round_timer(self, round_s: float) -> None:
        # Rounds fall on the clock's multiples of `round_s`, as the simulator's do when
        # it knows the Unix time of its zero (`EngineOptions.epoch_s`: a recording's
        # origin, a snapshot's time), so both hosts decide at the same instants.
        while True:
            now = self.clock()
            tick = round(now / round_s) * round_s
            # Decided as of its instant on the grid, as the simulator's round is (the
            # values of shares depend on when they would complete), not the moment
            # this loop got to it.
            self._round_at = tick if abs(now - tick) < round_s / 10 else None
            self.request_round()
            delay = round_s - self.clock() % round_s
            await asyncio.sleep(delay if delay > round_s / 10 else delay + round_s)

    def request_round(self) -> None:
        """Make the next pass ask the policy, whatever its kind (a round)."""
        self._round_due = True
        self.wake()

    async def _expiry_timer(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.options.assume_timeout_s / 4))
            if self.cache.expired(self.clock()):
                self.wake()

    def _set_idle(self) -> None:
        if not self._inflight and not self._wake.is_set():
            self._idle.set()

    # -- one pass ---------------------------------------------------------------------

    def run_pass(self) -> SchedulingResult | None:
        """Decide on the current cache and start carrying the decisions out. Returns
        the policy's result, or None when there was nothing to ask it."""
        now = self.clock()
        self._expire(now)
        if self.cache.ledger.state is None or not self.may_bind():
            return None
        dra = self.cache.dra if self.claims is not None else None
        pods = self.cache.pending_pods()
        if dra is None:
            pods = self._without_claims(pods, now)
        workload = self.cache.pending.workload(pods, self.cache.seq, dra)
        if self.cache.dra.labels_changed:
            self.cache.refresh_dra_labels()  # label the nodes that fit new DRA requests
        state = self.cache.ledger.state
        if state is None:
            return None
        for rejected in workload.rejected:
            for pod in rejected.pods:
                self._reject(pod, rejected.problem, now)
        for pod in list(self.cache.flagged.values()):
            self._flag_bound(pod, now)
        pending = self._carry_out_plans(workload.pending, now)
        event_driven = self.round_s is None and not self.options.external_rounds
        if not (event_driven or self._round_due):
            return None
        self._round_due = False
        decided_at, self._round_at = self._round_at or now, None
        if not (pending or self.round_s is not None):
            return None
        self.stats.passes += 1
        snapshot = self._snapshot(state, pending, workload.pending, min(decided_at, now))
        by_id = {job.spec.id: job for job in pending}
        started = time.perf_counter()
        result = self._decide(snapshot, by_id, now)
        self.on_pass(result, time.perf_counter() - started)
        if self.on_decided is not None:
            self.on_decided(snapshot, result)
        self.apply(result, by_id, now)
        if result.wake_at is not None and result.wake_at > now:
            asyncio.get_running_loop().call_later(result.wake_at - now, self.wake)
        return result

    def snapshot_now(self, now: float) -> Snapshot | None:
        """The cluster as the policy's next pass would see it (None before the nodes are
        known): the CTJ openings' inference shares and configs are planned on it
        (`controller.ctj.inference`), as the simulator plans them on its pass's view."""
        state = self.cache.ledger.state
        if state is None:
            return None
        pods = [p for p in self.cache.pending_pods() if not p.claims]
        waiting = build_workload(pods, self.cache.seq, self.cache.encoder).pending
        return self._snapshot(state, waiting, waiting, now)

    def _snapshot(
        self, state: ClusterState, pending: list[PendingJob], growing: list[PendingJob], now: float
    ) -> Snapshot:
        return Snapshot(
            cluster=self._held_for_growth(state, growing),
            running=self.cache.running.views(self.cache.charges(), state, now),
            pending=[self._pending_view(job) for job in pending],
            now=now,
        )

    def _held_for_growth(self, state: ClusterState, jobs: list[PendingJob]) -> ClusterState:
        """The cluster as the policy sees it: the GPUs planned for windows whose added
        pods are on their way are taken, as they are in the simulator the instant it
        grows a job (else the next round gives them to another job and the plan waits
        for it to finish). A plan whose GPUs went to a pod placed meanwhile is not held."""
        growing = [j for j in jobs if j.spec.id in self._growing and j.spec.id in self._plans]
        if not growing:
            return state.view()
        held = state.copy()
        for job in growing:
            if _fits(self._plans[job.spec.id], job, held):
                take(held, job.spec, self._plans[job.spec.id])
        return held.view()

    def _pending_view(self, job: PendingJob) -> JobView:
        """A job's view while it waits; a moved retraining window's as the simulator's
        preempted job has it: started before, with its restarts, service and work done
        (its owner recreated its pods without them)."""
        view = self.cache.pending.view(job)
        moved = self._moved.get(job.spec.id)
        if moved is None or job.spec.kind != RETRAIN_KIND:
            return view
        return replace(
            view,
            started_at=view.queued_since,
            restarts=int(moved[RESTARTS]),
            attained_gpu_s=float(moved[ATTAINED_GPU_S]),
            done=work_done(moved),
        )

    def _without_claims(self, pods: list[PodRecord], now: float) -> list[PodRecord]:
        """With DRA off, a pod with claims is reported, not placed: bound without its
        devices allocated, it could never start."""
        for pod in pods:
            if pod.claims:
                self._reject(pod, Problem("spec.resourceClaims", DRA_OFF), now)
        return [pod for pod in pods if not pod.claims]

    def _decide(
        self, snapshot: Snapshot, pending: dict[str, PendingJob], now: float
    ) -> SchedulingResult:
        """The policy's decisions; if it raises, the jobs it fails on are set aside
        and it is asked again without them."""
        try:
            return self.policy.schedule(snapshot, self.ctx)
        except Exception as err:  # a policy bug must cost its jobs, not the scheduler
            self.stats.policy_errors += 1
            log.exception("policy %s failed on a pass; isolating the jobs", self.policy.name)
            culprits = self._culprits(snapshot, list(snapshot.pending))
            for view in culprits:
                problem = Problem("policy", f"{self.policy.name} failed on this job: {err!r}")
                for pod in pending[view.id].pods:
                    self._reject(pod, problem, now)
            rest = [v for v in snapshot.pending if v not in culprits]
            try:
                return self.policy.schedule(replace(snapshot, pending=rest), self.ctx)
            except Exception:
                log.exception(
                    "policy %s fails even without those jobs: pass skipped", self.policy.name
                )
                return SchedulingResult()

    def _culprits(self, snapshot: Snapshot, jobs: list[JobView]) -> list[JobView]:
        """The pending jobs the policy raises on when asked about them alone or in a
        half of the queue (a bisection: O(culprits · log jobs) policy calls)."""
        if not jobs or not self._raises(replace(snapshot, pending=jobs)):
            return []
        if len(jobs) == 1:
            return jobs
        middle = len(jobs) // 2
        return self._culprits(snapshot, jobs[:middle]) + self._culprits(snapshot, jobs[middle:])

    def _raises(self, snapshot: Snapshot) -> bool:
        try:
            self.policy.schedule(snapshot, self.ctx)
        except Exception:
            return True
        return False

    def apply(self, result: SchedulingResult, pending: dict[str, PendingJob], now: float) -> None:
        preempted = set()
        for decision in result.decisions:
            if isinstance(decision, Preempt):
                self._evict_job(decision.job_id, decision.reason, None)
                preempted.add(decision.job_id)
            elif isinstance(decision, Resize):
                self._evict_job(decision.job_id, decision.reason, decision.placement)
        state = self.cache.ledger.state
        reasons: dict[Hashable, str] = {}
        for decision in result.decisions:
            if isinstance(decision, Place):
                reasons.clear()  # a placement may change why no node fits
            if isinstance(decision, Place) and decision.job_id in preempted:
                self._plans[decision.job_id] = decision.placement  # a share reassigned
            elif isinstance(decision, Place) and decision.job_id in pending:
                job = pending[decision.job_id]
                if state is None or not self._keeps_contract(job, decision.placement, now):
                    continue
                if len(decision.placement.tasks) > len(job.pods):
                    self._grow(job, decision.placement)
                    continue
                if not _fits(decision.placement, job, state):
                    # Its GPUs are still held by pods being evicted: bind once they leave
                    # (their kubelet still counts them, so it is asked only then).
                    log.info("plan %s: waiting for evicted pods to leave", decision.job_id)
                    self._plans[decision.job_id] = decision.placement
                    continue
                refused = self._kubelet_refuses(job, decision.placement)
                if refused:
                    for pod in job.pods:
                        self._report(pod, refused, now)
                    continue
                self.place(job, decision.placement, decision.reason, now)
            elif isinstance(decision, Unschedulable) and decision.job_id in pending:
                message = decision.reason
                if message == NO_NODE_FITS and state is not None:
                    message = self._no_node_fits(pending[decision.job_id].spec, state, reasons)
                if decision.plugin:
                    message = f"{decision.plugin}: {message}"
                log.info("unschedulable %s: %s", decision.job_id, message)
                for pod in pending[decision.job_id].pods:
                    self._report(pod, message, now)

    def _no_node_fits(self, spec: JobSpec, state: ClusterState, known: dict[Hashable, str]) -> str:
        """Why no node fits `spec`, found once per request shape while `state` is as it
        is: a long queue waits in few shapes, and each diagnosis scans every node in
        Python (1,500 waiting jobs took ~150 ms a pass at 500 nodes)."""
        shape = (
            spec.task,
            frozenset(spec.node_selector.items()),
            spec.tolerations,
            spec.allowed_models,
        )
        if shape not in known:
            why = why_no_node_fits(spec, state) + self.cache.dra.unfit(spec.node_selector)
            known[shape] = why
        return known[shape]

    def _keeps_contract(self, job: PendingJob, placement: Placement, now: float) -> bool:
        """Whether the placement is one this job's pods can take (else it is reported)."""
        state = self.cache.ledger.state
        try:
            if state is None:
                return False
            check_shape(job.spec, placement, state)
            tasks, pods = len(placement.tasks), len(job.pods)
            if tasks < pods or (tasks > pods and job.spec.elastic is None):
                raise PlacementError(f"{len(placement.tasks)} tasks for {len(job.pods)} pods")
        except PlacementError as err:
            problem = Problem(
                "placement", f"{self.policy.name} broke the placement contract: {err}"
            )
            for pod in job.pods:
                self._reject(pod, problem, now)
            return False
        return True

    def _kubelet_refuses(self, job: PendingJob, placement: Placement) -> str:
        """Why a node's kubelet would refuse one of the job's pods (its extended-resource
        requests, e.g. `nvidia.com/gpu`, beyond the node's allocatable), or ""."""
        admission = self.cache.admission
        taken: dict[str, dict[str, Decimal]] = {}
        for pod, where in zip(job.pods, placement.tasks, strict=True):
            node = self.cache.nodes.get(where.node)
            if node is None:
                return f"node {where.node} is gone"
            before = taken.setdefault(where.node, {})
            requests = {k: v + before.get(k, Decimal(0)) for k, v in pod.resources.items()}
            why = admission.shortfall(where.node, node.resources, requests)
            if why:
                return why
            taken[where.node] = requests
        return ""

    def place(self, job: PendingJob, placement: Placement, reason: str, now: float) -> None:
        """Assume every task of the job now; bind in the background."""
        task = job.spec.task
        if job.asks and not self._claims_free(job):
            log.info("place %s deferred: a claim of it is being allocated", job.spec.id)
            return
        plans = self._claim_plans(job, placement, now)
        if plans is None:
            return
        for pod, where, planned in zip(job.pods, placement.tasks, plans, strict=True):
            charge = Charge(where.node, where.gpus, where.gpu_milli, task.cpu_milli, task.mem_mib)
            if planned is not None:
                self.cache.assume_claims(pod, charge, planned)
            else:
                self.cache.assume(pod, charge)
            self._reported.pop(pod.uid, None)
            log.info(
                "place %s → %s GPUs %s at %d milli: %s",
                pod.key,
                where.node,
                list(where.gpus),
                where.gpu_milli,
                reason,
            )
        resumed = self._moved.pop(job.spec.id, {})
        state = self.cache.ledger.state
        if state is not None:
            shape = allocation_shape(placement, state)
            restarts = job.pods[0].meta.restarts
            resumed = {**resumed, **granted_runtime(job.spec, shape, resumed, restarts)}
        self._spawn(self._bind_job(job, placement, now, resumed))

    def _claim_plans(
        self, job: PendingJob, placement: Placement, now: float
    ) -> list[list[ClaimAllocation] | None] | None:
        """Each pod's claim allocations for the placement (None for a pod without
        claims); None, and the pods reported, if the placement cannot serve them."""
        if not job.asks:
            return [None] * len(job.pods)
        try:
            return [
                None if ask is None else self.cache.dra.plan(ask, w.node, w.gpus, w.gpu_milli)
                for ask, w in zip(job.asks, placement.tasks, strict=True)
            ]
        except (KeyError, IndexError) as err:
            problem = Problem("spec.resourceClaims", f"placement cannot serve the claims: {err!r}")
            for pod in job.pods:
                self._reject(pod, problem, now)
            return None

    def _claims_free(self, job: PendingJob) -> bool:
        """No claim of the job is already being allocated (a claim shared by pods that
        were placed in the same pass is allocated once; the others wait a pass)."""
        pending = self.cache.dra.pending
        return not any(c.uid in pending for ask in job.asks if ask for c in ask.claims)

    # -- binding cycle ----------------------------------------------------------------

    async def _bind_job(
        self, job: PendingJob, placement: Placement, now: float, resumed: dict[str, str]
    ) -> None:
        outcomes = await asyncio.gather(
            *(
                self._bind_pod(pod, where.node, where.gpus, where.gpu_milli, now, resumed)
                for pod, where in zip(job.pods, placement.tasks, strict=True)
            )
        )
        bound = [pod for pod, ok in zip(job.pods, outcomes, strict=True) if ok]
        if len(bound) < len(job.pods) and bound:
            log.warning(
                "gang %s bound only %d of %d pods: evicting the bound ones",
                job.spec.id,
                len(bound),
                len(job.pods),
            )
            for pod in bound:
                await self._evict_pod(pod, job.spec.id, job.spec.submit_time, _carried(pod))

    async def _bind_pod(
        self,
        pod: PodRecord,
        node: str,
        gpus: tuple[int, ...],
        milli: int,
        now: float,
        resumed: dict[str, str],
    ) -> bool:
        async with self._limit:
            held = self.cache.assumed.get(pod.uid)
            if held is None or held.charge.node != node or node not in self.cache.nodes:
                # The assumption was dropped or replaced meanwhile (e.g. its node went away).
                log.info("bind %s → %s skipped: assumption no longer held", pod.key, node)
                return False
            if not self.may_bind():
                log.warning("bind %s → %s withheld: not the leader", pod.key, node)
                self.cache.forget(pod.uid)
                return False
            planned = self.cache.planned_claims(pod.uid)
            if planned and not await self._reserve_claims(pod, planned, now):
                return False
            annotations = {**resumed, **placement_annotations(gpus, milli, now)}
            if not planned:
                node_record = self.cache.nodes[node]
                annotations.update(
                    self.cache.encoder.annotations(pod, node_record, gpus, milli, now)
                )
            outcome = await self.effects.bind(pod, node, annotations)
            if outcome is BindOutcome.RETRY:
                self.stats.bind_retries += 1
                outcome = await self._settle_unknown(pod, node)
            if planned and outcome in (BindOutcome.CONFLICT, BindOutcome.GONE):
                assert self.claims is not None
                await self.claims.unreserve(pod, planned)
            if outcome is BindOutcome.BOUND:
                self.cache.settle_claims(pod.uid)
        self.cache.finish_binding(pod.uid, self.clock() + self.options.assume_timeout_s)
        if outcome is BindOutcome.RETRY:
            log.warning("bind %s → %s unconfirmed; assumed until it expires", pod.key, node)
            return False
        if outcome is BindOutcome.BOUND and node not in self.cache.nodes:
            # The node vanished while the bind was on its way: the pod would never run
            # (and pod GC would delete it), so it goes back to the queue as a new pod.
            log.warning("bound %s to %s, which is gone; recreating the pod", pod.key, node)
            submit = pod.meta.submit_time or pod.created
            await self._evict_pod(pod, job_id(pod), submit, _carried(pod))
            return False
        if outcome is BindOutcome.BOUND:
            self.stats.bound += 1
            record = BindRecord(pod, node, gpus, milli, self.clock())
            self.on_bound(record)
            self._announce(record)
            return True
        if outcome is BindOutcome.CONFLICT:
            self.stats.conflicts += 1
        log.info("bind %s → %s %s: assumption dropped", pod.key, node, outcome.value)
        self.cache.forget(pod.uid)
        await self._refresh(pod)
        return False

    async def _reserve_claims(
        self, pod: PodRecord, planned: list[ClaimAllocation], now: float
    ) -> bool:
        """Write the pod's claims (allocation, reservation) before its bind; on failure
        undo what was written, drop the assumption and let the next pass plan again."""
        if self.claims is None:
            self.cache.forget(pod.uid)
            return False
        outcome, written = await self.claims.reserve(pod, planned, now)
        if outcome is ClaimOutcome.RESERVED:
            return True
        self.stats.conflicts += 1
        log.info("claims of %s not reserved (%s): planning it again", pod.key, outcome.value)
        await self.claims.unreserve(pod, written)
        self.cache.forget(pod.uid)
        await self._refresh(pod)
        return False

    async def _settle_unknown(self, pod: PodRecord, node: str) -> BindOutcome:
        """After an unclear answer, the pod itself says whether the bind happened."""
        try:
            current = await self.effects.read_pod(pod.namespace, pod.name)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return BindOutcome.RETRY
        if current is None or current["metadata"].get("uid") != pod.uid:
            return BindOutcome.GONE
        return BindOutcome.BOUND if current["spec"].get("nodeName") == node else BindOutcome.RETRY

    async def _refresh(self, pod: PodRecord) -> None:
        """Re-read a pod whose state we are unsure of and feed it to the cache, unless
        the watch spoke of the pod while the read was out: its word is at least as new,
        and a read answered before a bind but applied after its echo would make the
        bound pod pending again (and a pass would bind it twice)."""
        asked = self.cache.pods.get(pod.uid)
        try:
            current = await self.effects.read_pod(pod.namespace, pod.name)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            log.warning("re-reading %s failed (%s); the watch will tell", pod.key, err)
            return
        if self.cache.pods.get(pod.uid) is not asked:
            return
        if current is not None and current["metadata"].get("uid") == pod.uid:
            self.cache.apply("pods", "MODIFIED", current)

    def _expire(self, now: float) -> None:
        for uid in self.cache.expired(now):
            pod = self.cache.pods.get(uid)
            name = pod.key if pod else uid
            log.warning("assumption for %s expired unconfirmed; re-reading it", name)
            self.stats.expired += 1
            self.cache.forget(uid)
            if pod is not None:
                self._spawn(self._refresh(pod))

    def _announce(self, record: BindRecord) -> None:
        """A `Scheduled` Event, as kube-scheduler writes, so `kubectl describe pod` shows
        who placed the pod where. Events are a courtesy: under a burst they queue behind
        binds on their own small limit, and beyond `EVENT_BACKLOG` they are dropped."""
        if self._event_backlog >= EVENT_BACKLOG:
            self.stats.events_dropped += 1
            return
        gpus = ",".join(map(str, record.gpus)) or "none"
        note = f"Successfully assigned {record.pod.key} to {record.node} (GPUs {gpus})"
        caveat = self.cache.encoder.caveat(record.pod)
        if caveat:
            note = f"{note}; {caveat}"
        self._event_backlog += 1
        self._spawn(self._post_event(record.pod, note, record.at))

    async def _post_event(self, pod: PodRecord, note: str, now: float) -> None:
        try:
            async with self._event_limit:
                await self.effects.event(pod, "Scheduled", note, "Normal", now)
        finally:
            self._event_backlog -= 1

    # -- evictions and plans ----------------------------------------------------------

    def _evict_job(self, jid: str, reason: str, plan: Placement | None) -> None:
        pods = self.cache.running.pods_of(jid)
        if not pods:
            return
        if plan is not None:
            self._plans[jid] = plan
        now = self.clock()
        state = self.cache.ledger.state
        view = (
            self.cache.running.view_of(jid, self.cache.charges(), state, now)
            if state is not None
            else None
        )
        service = _service(view, now) if view is not None else _carried(pods[0])
        submit = view.spec.submit_time if view is not None else now
        if len(self._moved) > REPORTED_PRUNE_AT:
            self._moved.clear()  # jobs that never came back (withdrawn windows)
        moved = carried(pods[0].meta.restarts + 1, *service)
        self._moved[jid] = {**moved, **carried_work(view, now)}
        log.info("%s %s: %s", "resize" if plan else "preempt", jid, reason)
        for pod in pods:
            self._spawn(self._evict_pod(pod, jid, submit, service))

    async def _evict_pod(self, pod: PodRecord, jid: str, submit: float, service: Service) -> None:
        attained, by_model = service
        async with self._limit:
            name = await self.effects.evict_and_recreate(pod, jid, attained, submit, by_model)
        if name is not None:
            self.stats.evicted += 1
            again = f"recreated as {pod.namespace}/{name}" if name else "its owner recreates it"
            log.info("evicted %s; %s", pod.key, again)

    def _carry_out_plans(self, pending: list[PendingJob], now: float) -> list[PendingJob]:
        """Bind jobs whose plan fits now; returns the jobs without a plan. A plan for a
        different number of pods than the job now has is dropped (the job is asked
        about again), so a job never waits on a plan that cannot be carried out."""
        state = self.cache.ledger.state
        rest = []
        for job in pending:
            plan = self._plans.get(job.spec.id)
            if plan is not None and len(plan.tasks) > len(job.pods) and job.spec.elastic:
                self._grow(job, plan)
                continue
            if plan is not None and len(plan.tasks) != len(job.pods):
                log.info(
                    "plan %s dropped: it has %d tasks, the job %d pods",
                    job.spec.id,
                    len(plan.tasks),
                    len(job.pods),
                )
                del self._plans[job.spec.id]
                self._growing.pop(job.spec.id, None)
                plan = None
            if plan is None:
                rest.append(job)
            elif (
                state is not None
                and _fits(plan, job, state)
                and not self._kubelet_refuses(job, plan)
            ):
                del self._plans[job.spec.id]
                self._growing.pop(job.spec.id, None)
                self.place(job, plan, "carrying out a plan decided earlier", now)
        return rest

    def _grow(self, job: PendingJob, plan: Placement) -> None:
        """Remember the plan and add the pods it needs (asked once per size)."""
        jid, size = job.spec.id, len(plan.tasks)
        self._plans[jid] = plan
        if self._growing.get(jid) == size:
            return
        self._growing[jid] = size
        log.info("grow %s from %d to %d pods", jid, len(job.pods), size)
        self._spawn(self._add_pods(jid, job.pods[0], added_names(job.pods, size)))

    async def _add_pods(self, jid: str, pod: PodRecord, names: list[str]) -> None:
        async with self._limit:
            created = await self.effects.add_pods(pod, names)
        if created < len(names):
            self._growing.pop(jid, None)  # the next pass asks again

    # -- reports ----------------------------------------------------------------------

    def _reject(self, pod: PodRecord, problem: Problem, now: float) -> None:
        """A pending pod set aside: counted, logged, and FailedScheduling naming why."""
        if self.quarantine.reject("Pod", pod.key, pod.uid, problem):
            self._report(pod, f"invalid {problem}", now)

    def _flag_bound(self, pod: PodRecord, now: float) -> None:
        """A bound pod with a field we cannot read: it keeps running (charged by its
        requests), and its owner hears why once."""
        problem = pod.problems_for(self.cache.scheduler_name)[0]
        if self.quarantine.reject("Pod", pod.key, pod.uid, problem):
            note = f"gpufleet cannot read {problem}; counting the pod by its requests"
            self._spawn(
                self._guarded(self.effects.event(pod, "InvalidObject", note, "Warning", now))
            )

    def _report(self, pod: PodRecord, message: str, now: float) -> None:
        if not self.options.report_unschedulable:
            return
        if pod.unschedulable_message == message or self._reported.get(pod.uid) == message:
            return
        if len(self._reported) > REPORTED_PRUNE_AT:
            # Forget pods that are gone, so a long-running scheduler does not grow.
            self._reported = {u: m for u, m in self._reported.items() if u in self.cache.pods}
        self._reported[pod.uid] = message
        self._spawn(self._guarded(self.effects.mark_unschedulable(pod, message, now)))

    async def _guarded(self, work: Awaitable[None]) -> None:
        async with self._limit:
            await work

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._inflight.add(task)
        self._idle.clear()
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background API work failed", exc_info=task.exception())
        self._set_idle()


Service = tuple[float, dict[str, float]]
"""GPU-seconds a job has received: in all, and on each GPU model."""


def _service(view: JobView, now: float) -> Service:
    """A running job's service up to `now`, its current stint counted on its GPU model,
    as the simulator's `JobRun.sync` books it (so Gavel and LAS read the same live)."""
    by_model = dict(view.service_by_model)
    if view.placement is not None and view.shape is not None:
        gpu_s = view.placement.gpu_milli_total / MILLI * max(0.0, now - view.service_since)
        if gpu_s:
            model = view.shape.gpu_model
            by_model[model] = by_model.get(model, 0.0) + gpu_s
    return view.attained(now), by_model


def _carried(pod: PodRecord) -> Service:
    """The service a pod that has not run since it was made carries over."""
    return pod.meta.attained_gpu_s, dict(pod.meta.attained_by_model)


def _fits(plan: Placement, job: PendingJob, state: ClusterState) -> bool:
    try:
        check_fits(job.spec, plan, state)
    except PlacementError:
        return False
    return True
