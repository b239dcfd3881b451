"""One owner for every long-running task of a controller replica.

Informers, the scheduling loop and the CTJ reconciler are meant to run until the
process stops. If one of them ends anyway (an exception escaped it, or it returned), the
replica is no longer doing its job, and a replica that keeps its Lease while silently
not scheduling is the worst outcome: the standby never takes over. So the supervisor
turns the first such end into `TaskDiedError`; the manager then releases the Lease and
the process exits non-zero, and `/healthz` reports the dead task in the meantime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskDiedError(RuntimeError):
    """A supervised task ended while the replica was meant to be serving."""

    def __init__(self, name: str, cause: BaseException | None) -> None:
        how = f"failed: {cause!r}" if cause is not None else "returned"
        super().__init__(f"controller task {name} {how}")
        self.name = name


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._changed = asyncio.Event()

    def spawn(self, name: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start `work` as the task `name` (names are unique within a replica)."""
        if name in self._tasks and not self._tasks[name].done():
            work.close()
            raise ValueError(f"task {name} is already running")
        task = asyncio.create_task(work, name=name)
        self._tasks[name] = task
        self._changed.set()
        return task

    def dead(self) -> list[str]:
        """Tasks that have ended, other than by being stopped."""
        return [name for name, task in self._tasks.items() if task.done()]

    def check(self) -> None:
        """Raise `TaskDiedError` for the first task that ended."""
        for name, task in self._tasks.items():
            if task.done():
                cause = None if task.cancelled() else task.exception()
                raise TaskDiedError(name, cause)

    async def until(self, work: Awaitable[T]) -> T:
        """Await `work` while watching every task: the first task to end raises
        `TaskDiedError` (and `work` is cancelled)."""
        main = asyncio.ensure_future(work)
        try:
            while True:
                self.check()
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                watched = {main, changed, *self._tasks.values()}
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                self.check()
                if main.done():
                    return main.result()
        finally:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await main

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the named tasks (all by default) and wait for them; they no longer
        count as dead."""
        for name in list(self._tasks) if names is None else names:
            task = self._tasks.pop(name, None)
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("task %s failed while stopping", name)
