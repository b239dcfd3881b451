"""Wiring: one API session, the node and pod informers feeding one cache, and the
scheduler on top. Nodes are listed before pods so that bound pods find their nodes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from controller.cache import NODES, PODS, ClusterCache
from controller.effects import ApiEffects
from controller.encoders import make_encoder
from controller.informer import Informer
from controller.kubeapi import KubeApi
from controller.objects import SCHEDULER_NAME
from controller.scheduler import Scheduler, SchedulerOptions
from policies import Policy

log = logging.getLogger(__name__)

NON_TERMINAL = "status.phase!=Succeeded,status.phase!=Failed"


@dataclass(frozen=True)
class ControllerOptions:
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)
    scheduler_name: str = SCHEDULER_NAME
    backend: str = "whole"
    """Device backend whose annotations the binder writes: whole, hami or gpushare."""
    resync_s: float = 300.0
    watch_timeout_s: float = 240.0


class Controller:
    def __init__(self, api: KubeApi, policy: Policy, options: ControllerOptions | None = None):
        self.api = api
        self.options = options or ControllerOptions()
        self.cache = ClusterCache(make_encoder(self.options.backend), self.options.scheduler_name)
        opts = self.options
        self.nodes = Informer(
            api, NODES, "/api/v1/nodes", self.cache, None, opts.resync_s, opts.watch_timeout_s
        )
        # All non-terminal pods, not only ours: other schedulers' pods hold GPUs too.
        selector = {"fieldSelector": NON_TERMINAL}
        self.pods = Informer(
            api, PODS, "/api/v1/pods", self.cache, selector, opts.resync_s, opts.watch_timeout_s
        )
        self.scheduler = Scheduler(policy, self.cache, ApiEffects(api), self.options.scheduler)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the informers, wait for their first lists, then start scheduling."""
        self._tasks.append(asyncio.create_task(self.nodes.run(), name="nodes-informer"))
        await self.nodes.synced.wait()
        self._tasks.append(asyncio.create_task(self.pods.run(), name="pods-informer"))
        await self.pods.synced.wait()
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        log.info(
            "scheduling as %r with policy %s: %d nodes, %d pods in cache",
            self.options.scheduler_name,
            self.scheduler.policy.name,
            len(self.cache.nodes),
            len(self.cache.pods),
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    async def settle(self, version: str = "") -> None:
        """Until the pod cache has seen `version` (if given) and the scheduler is idle."""
        if version:
            await self.pods.wait_for_version(version)
        await self.scheduler.wait_idle()
