"""Prometheus metrics of one controller replica, and the HTTP endpoint that serves them
beside the liveness and readiness probes.

Counters the scheduler already keeps (binds, conflicts, expired assumptions) and state
that lives elsewhere (pending pods, leadership, each ContinualTrainingJob's status) are
read at scrape time, so they cannot drift from their source; what only passes through
(policy decisions, latencies, reconcile results) is counted as it happens.

The metrics and their labels are listed in docs/in-cluster.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controller.ctj.continual import ctj_clock, tracked_model
from controller.ctj.crd import Ctj
from controller.scheduling.quarantine import Quarantine
from controller.scheduling.scheduler import BindRecord, Scheduler
from controller.scheduling.workload import task_request
from policies import MILLI, ClusterState, Place, SchedulingResult, TaskRequest, Unschedulable
from policies.fragmentation import node_fragmentation
from policies.target_workload import build_target_workload
from traces.errors import TraceError
from traces.forecast_score import ScoreRow, read_score

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControllerMetrics:
    """Metrics in a registry of their own (several replicas may share a test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.attempts = Counter(
            "gpufleet_scheduling_attempts",
            "Jobs the policy decided on, by result",
            ["result"],
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            "gpufleet_scheduling_pass_duration_seconds",
            "Wall time of one policy decision over the pending queue",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pod_seconds = Histogram(
            "gpufleet_pod_scheduling_duration_seconds",
            "From a pod's creation to its successful bind",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reconciles = Counter(
            "gpufleet_ctj_reconciles",
            "ContinualTrainingJob reconciles, by result",
            ["result"],
            registry=self.registry,
        )
        self.unschedulable = 0

    def watch_scheduler(self, scheduler: Scheduler) -> None:
        """Count the scheduler's decisions and binds, and read its stats and queue."""
        scheduler.on_pass = self._on_pass
        previous = scheduler.on_bound

        def on_bound(record: BindRecord) -> None:
            previous(record)
            self.pod_seconds.observe(max(0.0, record.at - record.pod.created))

        scheduler.on_bound = on_bound
        self.registry.register(_SchedulerCollector(scheduler, self))
        self.registry.register(_ClusterCollector(scheduler))

    def watch_leader(self, identity: str, is_leader: Callable[[], bool]) -> None:
        self.registry.register(_LeaderCollector(identity, is_leader))

    def watch_ctjs(
        self, ctjs: Callable[[], Iterable[Ctj]], clock: Callable[[], float] = time.time
    ) -> None:
        self.registry.register(_CtjCollector(ctjs, clock))

    def watch_forecast_score(self, path: Path) -> None:
        """Export the table of the newest `gpufleet whatif --score` run at `path`."""
        self.registry.register(_ForecastScoreCollector(path))

    def watch_quarantine(self, quarantine: Quarantine) -> None:
        self.registry.register(_QuarantineCollector(quarantine))

    def _on_pass(self, result: SchedulingResult, seconds: float) -> None:
        self.pass_seconds.observe(seconds)
        placed = sum(isinstance(d, Place) for d in result.decisions)
        rejected = sum(isinstance(d, Unschedulable) for d in result.decisions)
        if placed:
            self.attempts.labels("scheduled").inc(placed)
        if rejected:
            self.attempts.labels("unschedulable").inc(rejected)
            self.unschedulable += rejected


class _SchedulerCollector:
    def __init__(self, scheduler: Scheduler, metrics: ControllerMetrics) -> None:
        self.scheduler = scheduler
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self.scheduler.stats
        bindings = CounterMetricFamily("gpufleet_bindings", "Pods bound by this replica")
        bindings.add_metric([], stats.bound)
        yield bindings
        failures = CounterMetricFamily(
            "gpufleet_scheduling_failures", "Scheduling failures, by reason", labels=["reason"]
        )
        failures.add_metric(["unschedulable"], self.metrics.unschedulable)
        failures.add_metric(["bind_conflict"], stats.conflicts)
        failures.add_metric(["assumption_expired"], stats.expired)
        failures.add_metric(["policy_error"], stats.policy_errors)
        yield failures
        retries = CounterMetricFamily(
            "gpufleet_bind_retries", "Binds with no clear answer, settled by re-reading the pod"
        )
        retries.add_metric([], stats.bind_retries)
        yield retries
        pending = GaugeMetricFamily("gpufleet_pending_pods", "Pods waiting for this scheduler")
        pending.add_metric([], len(self.scheduler.cache.pending_pods()))
        yield pending


class _ClusterCollector:
    """GPUs, allocated GPUs and fragmentation per GPU model, from the scheduler's ledger
    at scrape time. Fragmentation is FGD's measure (`policies.fragmentation`) against the
    tasks the cluster holds and waits for, as % of the model's GPU capacity."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        labels = ["model"]
        total = GaugeMetricFamily("gpufleet_gpus", "GPUs in the cluster", labels=labels)
        used = GaugeMetricFamily(
            "gpufleet_allocated_gpus", "GPUs held by pods (fractions count)", labels=labels
        )
        frag = GaugeMetricFamily(
            "gpufleet_fragmentation_percent",
            "GPU capacity no task of the current workload can use, % of the model's GPUs",
            labels=labels,
        )
        state = self.scheduler.cache.ledger.state
        if state is not None and state.total_gpus:
            per_node = self._fragmentation(state)
            free = state.gpu_free.sum(axis=1)
            for i, model in enumerate(state.gpu_models):
                nodes = state.model_idx == i
                capacity = float(state.gpu_count[nodes].sum())
                total.add_metric([model], capacity)
                used.add_metric([model], capacity - float(free[nodes].sum()) / MILLI)
                if per_node is not None and capacity:
                    frag.add_metric(
                        [model], 100.0 * float(per_node[nodes].sum()) / MILLI / capacity
                    )
        yield total
        yield used
        yield frag

    def _fragmentation(self, state: ClusterState) -> np.ndarray | None:
        cache = self.scheduler.cache
        held = (
            (TaskRequest(c.cpu_milli, c.mem_mib, len(c.gpus), c.gpu_milli), None)
            for c in cache.charges().values()
            if c.gpus
        )
        waiting = (
            (task_request(p, cache.encoder), p.meta.gpu_models) for p in cache.pending_pods()
        )
        try:
            workload = build_target_workload([*held, *waiting])
        except ValueError:
            return None  # no task to measure against (or one the decoder set aside)
        return node_fragmentation(state, workload)


class _QuarantineCollector:
    def __init__(self, quarantine: Quarantine) -> None:
        self.quarantine = quarantine

    def collect(self) -> Iterator[Metric]:
        rejected = CounterMetricFamily(
            "gpufleet_rejected_objects",
            "Objects set aside instead of served, by kind and the field that was wrong",
            labels=["kind", "reason"],
        )
        for (kind, reason), count in sorted(self.quarantine.counts.items()):
            rejected.add_metric([kind, reason], count)
        yield rejected


class _LeaderCollector:
    def __init__(self, identity: str, is_leader: Callable[[], bool]) -> None:
        self.identity = identity
        self.is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily(
            "gpufleet_leader", "1 while this replica holds the lease", labels=["identity"]
        )
        leader.add_metric([self.identity], 1.0 if self.is_leader() else 0.0)
        yield leader


class _CtjCollector:
    def __init__(self, ctjs: Callable[[], Iterable[Ctj]], clock: Callable[[], float]) -> None:
        self.ctjs = ctjs
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "name"]
        missed = CounterMetricFamily(
            "gpufleet_ctj_deadline_misses", "Windows that missed their deadline", labels=labels
        )
        completed = CounterMetricFamily(
            "gpufleet_ctj_windows_completed", "Windows retrained in time", labels=labels
        )
        accuracy = GaugeMetricFamily(
            "gpufleet_ctj_accuracy",
            "Accuracy of the model a CTJ serves as the reconciler knows it: source=observed "
            "is the last measurement (status.observedAccuracy), source=curve the tracked "
            "model decayed along spec.accuracy to now",
            labels=[*labels, "source"],
        )
        now = self.clock()
        for ctj in self.ctjs():
            missed.add_metric([ctj.namespace, ctj.name], ctj.status.missed_deadlines)
            completed.add_metric([ctj.namespace, ctj.name], ctj.status.completed_windows)
            for source, value in _accuracies(ctj, now):
                accuracy.add_metric([ctj.namespace, ctj.name, source], value)
        yield missed
        yield completed
        yield accuracy


def _accuracies(ctj: Ctj, now: float) -> Iterator[tuple[str, float]]:
    """What the reconciler knows of the serving model's accuracy, by source."""
    if ctj.problem is not None:
        return
    if ctj.status.observed is not None:
        yield "observed", ctj.status.observed.value
    try:
        first_opening = ctj_clock(ctj.spec.retrain, ctj.created).first_opening()
    except ValueError:
        return  # the reconciler reports the schedule
    model = tracked_model(ctj, first_opening)
    if model is not None:
        yield "curve", model.accuracy(now)


class _ForecastScoreCollector:
    """The error of earlier forecasts, from a `whatif --score` table (its file, or the
    run directory holding `score.csv`) read at each scrape, so a newer scoring run is
    exported as soon as it is written. The controller does not forecast by itself: the
    numbers are those of the last scoring run. A missing or malformed table exports
    nothing and is logged once per distinct problem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._logged = ""

    def collect(self) -> Iterator[Metric]:
        error = GaugeMetricFamily(
            "gpufleet_forecast_error_seconds",
            "Absolute error of earlier whatif forecasts' p50 start and finish (whatif --score)",
            labels=["source", "quantity", "stat"],
        )
        scored = GaugeMetricFamily(
            "gpufleet_forecast_scored_jobs",
            "Jobs the last whatif --score run compared",
            labels=["source", "quantity"],
        )
        for row in self._rows():
            for quantity, jobs, mean, p90 in _score_columns(row):
                scored.add_metric([row.source, quantity], jobs)
                for stat, value in (("mean", mean), ("p90", p90)):
                    if value is not None:
                        error.add_metric([row.source, quantity, stat], value)
        yield error
        yield scored

    def _rows(self) -> list[ScoreRow]:
        # Resolved at each scrape: the directory may be written after the start.
        table = self.path / "score.csv" if self.path.is_dir() else self.path
        try:
            rows, problem = read_score(table), ""
        except (TraceError, OSError) as err:
            rows, problem = [], str(err)
        if problem and problem != self._logged:
            log.warning("forecast score not exported: %s", problem)
        self._logged = problem
        return rows


def _score_columns(row: ScoreRow) -> tuple[tuple[str, int, float | None, float | None], ...]:
    return (
        ("start", row.jobs, row.start_mean_s, row.start_p90_s),
        ("finish", row.finish_jobs, row.finish_mean_s, row.finish_p90_s),
    )


class ProbeServer:
    """`/metrics`, `/healthz` (the event loop answers and no task has died) and `/readyz`
    (caches synced), served from the controller's own event loop: a wedged loop fails
    its probe."""

    def __init__(
        self,
        metrics: ControllerMetrics,
        ready: Callable[[], bool],
        dead: Callable[[], list[str]] = list,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.dead = dead
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("metrics and probes on http://%s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        dead = self.dead()
        if dead:
            return web.Response(status=503, text=f"dead tasks: {', '.join(dead)}")
        return web.Response(text="ok")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="caches not synced")
