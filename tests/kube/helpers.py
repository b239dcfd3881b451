"""What the real-apiserver tests share beyond controller.devcluster: the controller run
in the test's own event loop, and polling the API for an outcome."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from controller.kube.kubeapi import KubeApi, load_config


class RunningController:
    """`async with RunningController(kubeconfig, policy) as ctl:` runs the controller in
    this event loop (as the scheduler user, so RBAC applies) and stops it afterwards."""

    def __init__(
        self, kubeconfig: str, policy: str = "bestfit", server: str = "", **options: Any
    ) -> None:
        from controller.runtime import Controller, ControllerOptions
        from policies import make_policy

        config = load_config(kubeconfig)
        self.api = KubeApi(dataclasses.replace(config, server=server) if server else config)
        self.controller = Controller(self.api, make_policy(policy), ControllerOptions(**options))

    async def __aenter__(self) -> Any:
        await self.controller.start()
        return self.controller

    async def __aexit__(self, *_exc: object) -> None:
        await self.controller.stop()
        await self.api.close()


async def eventually(check: Any, timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll an async check until it returns a truthy value (API state has no push hook
    for tests; the controller itself never polls)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
