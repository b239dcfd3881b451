"""The supervisor turns the first task that ends into `TaskDiedError`, and `/healthz`
tells the truth about dead tasks until the replica exits."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from controller.metrics import ControllerMetrics, ProbeServer
from controller.supervisor import Supervisor, TaskDiedError


async def forever() -> None:
    await asyncio.Event().wait()


async def fails_after(seconds: float) -> None:
    await asyncio.sleep(seconds)
    raise ValueError("bad annotation slipped through")


def test_a_task_that_raises_ends_the_wait_naming_it() -> None:
    async def main() -> None:
        supervisor = Supervisor()
        supervisor.spawn("informer", forever())
        supervisor.spawn("scheduler", fails_after(0.01))
        with pytest.raises(TaskDiedError, match="scheduler failed: ValueError"):
            await supervisor.until(forever())
        assert supervisor.dead() == ["scheduler"]
        await supervisor.stop()

    asyncio.run(main())


def test_a_task_that_returns_counts_as_dead_too() -> None:
    async def main() -> None:
        supervisor = Supervisor()
        supervisor.spawn("reconciler", asyncio.sleep(0.01))
        with pytest.raises(TaskDiedError, match="reconciler returned"):
            await supervisor.until(forever())
        await supervisor.stop()

    asyncio.run(main())


def test_the_awaited_work_returns_while_every_task_lives() -> None:
    async def main() -> None:
        supervisor = Supervisor()
        supervisor.spawn("informer", forever())
        assert await supervisor.until(asyncio.sleep(0.01, result="synced")) == "synced"
        await supervisor.stop(["informer"])
        assert supervisor.dead() == []  # stopped on purpose is not dead

    asyncio.run(main())


def test_a_task_spawned_during_the_wait_is_watched() -> None:
    async def main() -> None:
        supervisor = Supervisor()

        async def spawn_later() -> None:
            await asyncio.sleep(0.01)
            supervisor.spawn("late", fails_after(0.01))
            await forever()

        with pytest.raises(TaskDiedError, match="late"):
            await asyncio.wait_for(supervisor.until(spawn_later()), 5)
        await supervisor.stop()

    asyncio.run(main())


def test_healthz_fails_while_a_task_is_dead() -> None:
    async def main() -> None:
        supervisor = Supervisor()
        supervisor.spawn("scheduler", fails_after(0.3))
        probes = ProbeServer(ControllerMetrics(), lambda: True, supervisor.dead)
        port = await probes.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/healthz"
                async with session.get(url) as healthy:
                    assert healthy.status == 200
                await asyncio.sleep(0.4)
                async with session.get(url) as dead:
                    assert dead.status == 503
                    assert await dead.text() == "dead tasks: scheduler"
        finally:
            await probes.stop()
            await supervisor.stop()

    asyncio.run(main())
