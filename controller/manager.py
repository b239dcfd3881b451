"""One replica of the in-cluster controller: the scheduler loop, the ContinualTrainingJob
reconciler, leader election, metrics and probes, wired together.

Every replica keeps its caches warm (informers run from the start, and `/readyz`
answers once they have synced), but only the lease holder schedules and reconciles.
Both check `is_leader()` right before each write, so the moment a renewal deadline
passes this replica binds and writes nothing more. Losing the lease ends `run()` with
`LeadershipLostError` (the process exits and its container restarts as a candidate, as
kube-scheduler does); cancelling `run()` releases the lease for a fast handover.

Every task of the replica runs under one `Supervisor`: a task that dies ends `run()`
with `TaskDiedError` after the lease is released, so a standby takes over at once, and
`/healthz` fails while any task is dead. Objects set aside by the scheduler and the
reconciler go through one `Quarantine`, which the metrics read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.ctj.continual import WindowChoice, is_stream, throughput_of
from controller.ctj.inference import plan_openings, reservation_key
from controller.ctj.reconciler import CtjReconciler
from controller.kube.kubeapi import KubeApi
from controller.kube.leader import LeaderElector, LeaseConfig
from controller.metrics import ControllerMetrics, ProbeServer
from controller.runtime import Controller, ControllerOptions
from controller.scheduling.quarantine import Quarantine
from controller.shadow.metrics import ShadowCollector
from controller.shadow.runner import ShadowOptions, ShadowRunner
from controller.supervisor import Supervisor
from policies import Policy
from policies.continual import WindowOpening

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagerOptions:
    controller: ControllerOptions = field(default_factory=ControllerOptions)
    lease: LeaseConfig | None = field(default_factory=LeaseConfig)
    """None: no leader election (a single replica that always leads)."""
    reconcile_ctjs: bool = True
    probe_host: str = "127.0.0.1"
    probe_port: int | None = 8080
    """None: no metrics/probe server; 0: any free port."""
    shadows: ShadowOptions | None = None
    """Shadow policies deciding beside the live one (`controller.shadow`)."""
    forecast_score: Path | None = None
    """A `whatif --score` table (or its run directory) to export as forecast error."""


class Manager:
    def __init__(self, api: KubeApi, policy: Policy, options: ManagerOptions | None = None):
        self.options = options or ManagerOptions()
        self.identity = self.options.lease.identity if self.options.lease else "single"
        self.supervisor = Supervisor()
        self.quarantine = Quarantine()
        self.controller = Controller(
            api, policy, self.options.controller, self.supervisor, self.quarantine
        )
        self.elector = LeaderElector(api, self.options.lease) if self.options.lease else None
        self.reconciler = (
            CtjReconciler(
                api,
                self.options.controller.scheduler_name,
                gate=self.is_leader,
                instance=self.identity,
                resync_s=self.options.controller.resync_s,
                supervisor=self.supervisor,
                quarantine=self.quarantine,
                plan_windows=self._plan_windows,
            )
            if self.options.reconcile_ctjs
            else None
        )
        self.controller.scheduler.may_bind = self.is_leader
        self.metrics = ControllerMetrics()
        self.metrics.watch_scheduler(self.controller.scheduler)
        self.metrics.watch_leader(self.identity, self.is_leader)
        self.metrics.watch_quarantine(self.quarantine)
        if self.reconciler is not None:
            cache = self.controller.scheduler.cache
            self.reconciler.on_gone = lambda key: cache.unreserve(reservation_key(key))
            self.metrics.watch_ctjs(self.reconciler.ctjs)
            self.reconciler.on_result = lambda result: self.metrics.reconciles.labels(result).inc()
        self.shadows = (
            ShadowRunner(self.options.shadows, policy.name) if self.options.shadows else None
        )
        if self.shadows is not None:
            self.controller.scheduler.on_decided = self.shadows.offer
            self.metrics.registry.register(ShadowCollector(self.shadows))
        if self.options.forecast_score is not None:
            self.metrics.watch_forecast_score(self.options.forecast_score)
        self.probes = ProbeServer(self.metrics, self.ready, self.supervisor.dead)
        self.synced = asyncio.Event()
        self.leading = asyncio.Event()

    def _plan_windows(self, openings: Sequence[WindowOpening]) -> list[WindowChoice]:
        """The openings' inference shares and configs on the scheduler's view of the
        cluster (`controller.ctj.inference.plan_openings`)."""
        assert self.reconciler is not None
        streams = [throughput_of(c.spec) for c in self.reconciler.ctjs() if is_stream(c)]
        scheduler = self.controller.scheduler
        chosen = plan_openings(
            scheduler.policy, scheduler.cache, openings, scheduler.snapshot_now, streams
        )
        log.info(
            "openings at %.3f planned: %s",
            openings[0].stream.start_s,
            ", ".join(
                f"{o.stream.id} w{o.index} from {o.acc_start:.4f}: "
                f"{o.stream.configs[c.config].name}"
                for o, c in zip(openings, chosen, strict=True)
            ),
        )
        return chosen

    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def ready(self) -> bool:
        return self.synced.is_set()

    async def run(self) -> None:
        """Serve until cancelled, until the lease is lost (`LeadershipLostError`), or
        until a task dies (`TaskDiedError`)."""
        if self.options.probe_port is not None:
            await self.probes.start(self.options.probe_host, self.options.probe_port)
        try:
            await self._sync()
            if self.elector is not None:
                await self.supervisor.until(self.elector.acquire())
            self._lead()
            holding = self.elector.hold() if self.elector is not None else asyncio.Event().wait()
            await self.supervisor.until(holding)
        finally:
            await self._shut_down()

    async def _sync(self) -> None:
        self.controller.scheduler.pause()
        await self.controller.start()
        if self.reconciler is not None:
            await self.reconciler.start_informers()
        self.synced.set()
        log.info("%s: caches synced; waiting for leadership", self.identity)

    def _lead(self) -> None:
        log.info("%s: leading: scheduling and reconciling", self.identity)
        self.leading.set()
        self.controller.scheduler.resume()
        if self.reconciler is not None:
            self.reconciler.start_reconciling()
        if self.shadows is not None:
            self.supervisor.spawn("shadows", self.shadows.run())

    async def _shut_down(self) -> None:
        self.controller.scheduler.pause()
        self.leading.clear()
        await self.supervisor.stop(["shadows"])
        if self.elector is not None:
            await self.elector.release()
        if self.reconciler is not None:
            await self.reconciler.stop()
        await self.controller.stop()
        await self.supervisor.stop()
        await self.probes.stop()
