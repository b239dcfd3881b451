"""Wiring: one API session, the node and pod informers feeding one cache, and the
scheduler on top. Nodes are listed before pods so that bound pods find their nodes.
Every task runs under the replica's supervisor (`controller.supervisor`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from controller.dra.allocator import ClaimWriter
from controller.dra.cli import DraOptions
from controller.dra.inventory import CLAIMS, CLASSES, SLICES
from controller.kube.informer import Informer
from controller.kube.kubeapi import KubeApi
from controller.kube.objects import SCHEDULER_NAME
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import ApiEffects
from controller.scheduling.encoders import make_encoder
from controller.scheduling.quarantine import Quarantine
from controller.scheduling.scheduler import Scheduler, SchedulerOptions
from controller.supervisor import Supervisor
from policies import Policy

log = logging.getLogger(__name__)

NON_TERMINAL = "status.phase!=Succeeded,status.phase!=Failed"
DRA_PATHS = (
    (SLICES, "/apis/resource.k8s.io/v1/resourceslices"),
    (CLASSES, "/apis/resource.k8s.io/v1/deviceclasses"),
    (CLAIMS, "/apis/resource.k8s.io/v1/resourceclaims"),
)


@dataclass(frozen=True)
class ControllerOptions:
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)
    scheduler_name: str = SCHEDULER_NAME
    backend: str = "whole"
    """Device backend whose annotations the binder writes: whole, hami or gpushare."""
    dra: DraOptions = field(default_factory=DraOptions)
    """Dynamic Resource Allocation (`resource.k8s.io/v1`)."""
    resync_s: float = 300.0
    watch_timeout_s: float = 240.0


class Controller:
    def __init__(
        self,
        api: KubeApi,
        policy: Policy,
        options: ControllerOptions | None = None,
        supervisor: Supervisor | None = None,
        quarantine: Quarantine | None = None,
    ):
        self.api = api
        self.supervisor = supervisor or Supervisor()
        self.options = options or ControllerOptions()
        self.cache = ClusterCache(
            make_encoder(self.options.backend),
            self.options.scheduler_name,
            self.options.dra.state(),
        )
        opts = self.options
        self.nodes = Informer(
            api, NODES, "/api/v1/nodes", self.cache, None, opts.resync_s, opts.watch_timeout_s
        )
        # All non-terminal pods, not only ours: other schedulers' pods hold GPUs too.
        selector = {"fieldSelector": NON_TERMINAL}
        self.pods = Informer(
            api, PODS, "/api/v1/pods", self.cache, selector, opts.resync_s, opts.watch_timeout_s
        )
        self.dra = (
            [
                Informer(api, kind, path, self.cache, None, opts.resync_s, opts.watch_timeout_s)
                for kind, path in DRA_PATHS
            ]
            if opts.dra.enabled
            else []
        )
        self.scheduler = Scheduler(
            policy,
            self.cache,
            ApiEffects(api),
            self.options.scheduler,
            quarantine=quarantine,
            claims=ClaimWriter(api) if opts.dra.enabled else None,
        )

    async def start(self) -> None:
        """Start the informers, wait for their first lists, then start scheduling."""
        await self._check_dra()
        # Slices before nodes, claims before pods: each side finds what it refers to.
        for informer in self.dra:
            self.supervisor.spawn(f"{informer.kind}-informer", informer.run())
            await self.supervisor.until(informer.synced.wait())
        self.supervisor.spawn("nodes-informer", self.nodes.run())
        await self.supervisor.until(self.nodes.synced.wait())
        self.supervisor.spawn("pods-informer", self.pods.run())
        await self.supervisor.until(self.pods.synced.wait())
        self.supervisor.spawn("scheduler", self.scheduler.run())
        log.info(
            "scheduling as %r with policy %s: %d nodes, %d pods in cache",
            self.options.scheduler_name,
            self.scheduler.policy.name,
            len(self.cache.nodes),
            len(self.cache.pods),
        )

    async def _check_dra(self) -> None:
        """A cluster that does not serve `resource.k8s.io/v1` (before 1.34), or a role
        without its rights, would keep the DRA informers from ever syncing: then DRA is
        turned off with a warning, and pods with claims are reported, not placed."""
        if not self.dra:
            return
        status, _ = await self.api.request("GET", DRA_PATHS[0][1], params={"limit": "1"})
        if status in (403, 404):
            log.warning(
                "DRA off: listing ResourceSlices answered HTTP %d (resource.k8s.io/v1 not "
                "served, or not permitted); pods with claims will be reported, not placed",
                status,
            )
            self.dra = []
            self.scheduler.claims = None

    async def stop(self) -> None:
        dra = [f"{informer.kind}-informer" for informer in self.dra]
        await self.supervisor.stop(["scheduler", "pods-informer", "nodes-informer", *dra])

    async def settle(self, version: str = "") -> None:
        """Until the pod cache has seen `version` (if given) and the scheduler is idle."""
        if version:
            await self.pods.wait_for_version(version)
        await self.scheduler.wait_idle()
