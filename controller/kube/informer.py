"""List + watch with informer semantics, reimplemented over raw JSON.

* Start by LISTing and hand the whole set to the handler (`replace`), then WATCH from
  the list's resourceVersion with bookmarks on, handing over each event (`apply`).
* A 410 Gone (an HTTP status or an ERROR event carrying one) means the resourceVersion
  is too old: LIST again and replace the cache. Never restart the watch from "now",
  which would silently lose whatever happened in between.
* A dropped connection resumes the watch from the last resourceVersion seen.
* Every `resync_s` the informer re-LISTs anyway, which repairs any drift.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

from controller.kube.kubeapi import ApiError, KubeApi

log = logging.getLogger(__name__)

GONE = 410


class ResourceHandler(Protocol):
    def replace(self, kind: str, objects: list[dict[str, Any]]) -> None:
        """The complete current set of objects (after a LIST)."""
        ...

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        ...


class WatchExpiredError(Exception):
    """The watch's resourceVersion is no longer available (410 Gone)."""


class Informer:
    def __init__(
        self,
        api: KubeApi,
        kind: str,
        path: str,
        handler: ResourceHandler,
        params: Mapping[str, str] | None = None,
        resync_s: float = 300.0,
        watch_timeout_s: float = 240.0,
        retry_s: float = 0.5,
    ) -> None:
        self.api = api
        self.kind = kind
        self.path = path
        self.handler = handler
        self.params = dict(params or {})
        self.resync_s = resync_s
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.lists = 0
        self.expirations = 0
        self._advanced = asyncio.Event()

    async def run(self) -> None:
        """List and watch until cancelled; transport errors are retried."""
        while True:
            try:
                await self._list()
                await self._watch_until_resync()
            except (aiohttp.ClientError, ApiError, OSError, TimeoutError) as err:
                log.warning("%s: list failed (%s); retrying in %.1fs", self.kind, err, self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def _list(self) -> None:
        items, version = await self.api.list_all(self.path, self.params)
        self.lists += 1
        self.handler.replace(self.kind, items)
        self._advance(version)
        self.synced.set()
        log.debug("%s: listed %d objects at resourceVersion %s", self.kind, len(items), version)

    async def _watch_until_resync(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resync_s
        # Watches last whole seconds (see KubeApi.watch): under one second left, resync now.
        while (left := deadline - loop.time()) >= 1:
            try:
                await self._watch_once(min(left, self.watch_timeout_s))
            except WatchExpiredError:
                self.expirations += 1
                log.info("%s: watch expired (410 Gone); relisting", self.kind)
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                version = self.resource_version
                log.warning("%s: watch broke (%s); resuming at %s", self.kind, err, version)
                await asyncio.sleep(self.retry_s)
        log.debug("%s: periodic resync", self.kind)

    async def _watch_once(self, timeout_s: float) -> None:
        params = {
            **self.params,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
        }
        try:
            async for event in self.api.watch(self.path, params, timeout_s):
                self._handle(event)
        except ApiError as err:
            if err.status == GONE:
                raise WatchExpiredError from err
            raise aiohttp.ClientError(str(err)) from err

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type", "")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == GONE:
                raise WatchExpiredError(obj.get("message", ""))
            raise aiohttp.ClientError(f"watch error {code}: {obj.get('message', '')}")
        version = (obj.get("metadata") or {}).get("resourceVersion", "")
        if kind != "BOOKMARK":
            self.handler.apply(self.kind, kind, obj)
        if version:
            self._advance(version)

    def _advance(self, version: str) -> None:
        self.resource_version = version
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def wait_for_version(self, version: str) -> None:
        """Until this informer has seen `version` (resourceVersions of one resource
        compare as integers since Kubernetes 1.35, KEP-5504)."""
        await self.wait_until(
            lambda: bool(self.resource_version) and int(self.resource_version) >= int(version)
        )

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds, re-checked after every list and event handled."""
        while not condition():
            await self._advanced.wait()
