"""Whatever fails in the shadows' task costs verdicts, never the task (which would end
the controller): a snapshot that cannot be pickled for the child, shadows that raise in
the child (even `SystemExit`), a shadow log that cannot be opened. Each is counted in
the shadows' error metric and logged once, and the worker goes on judging the
snapshots offered after it, in a real child process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.shadow.log import read_shadow_log
from controller.shadow.mirror import SnapshotUpdate
from controller.shadow.runner import ShadowOptions, ShadowRunner
from policies import Context, SchedulingResult, Snapshot, make_policy
from tests.test_shadow import live, snapshot


class RaisesInChild:
    """A shadow with a bug (module level: the child process unpickles it by name)."""

    name = "raises"

    def schedule(self, _snapshot: Snapshot, _ctx: Context) -> SchedulingResult:
        raise RuntimeError("shadow bug")


class ExitsInChild:
    """A shadow that calls `sys.exit`: the process pool carries a `SystemExit` back,
    which, raised in the controller, would end it."""

    name = "exits"

    def schedule(self, _snapshot: Snapshot, _ctx: Context) -> SchedulingResult:
        raise SystemExit("shadow exits")


class Worker:
    """The runner's task, fed a snapshot every half second, as the live loop would."""

    def __init__(self, runner: ShadowRunner) -> None:
        self.runner = runner
        self.now = 100.0
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Worker:
        self.task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task  # a task that ended by itself raises its own error here

    async def offer_until(self, done: Callable[[], bool], what: str) -> None:
        """Offer snapshots until `done()`; the worker must be running all along."""
        assert self.task is not None
        for step in range(1200):  # a child takes seconds to start on a busy machine
            if step % 5 == 0:
                self.now += 1.0
                snap = snapshot(self.now)
                self.runner.offer(snap, live("bestfit", snap))
            if done():
                return
            assert not self.task.done(), "the shadows' task ended"
            await asyncio.sleep(0.1)
        raise TimeoutError(what)


def errors(runner: ShadowRunner) -> dict[str, int]:
    return {name: stats.errors for name, stats in runner.stats.items()}


def logged(path: Path) -> list[dict[str, Any]]:
    return read_shadow_log(path).rows if path.exists() else []


def causes_logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_a_snapshot_that_cannot_be_pickled_costs_that_snapshot_and_the_next_goes_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first snapshot is judged (an update built on nothing); the second update
    carries something no pickler takes (a lambda), so it never reaches the child: both
    shadows count an error, and the third update is whole again (built on nothing,
    though the child confirmed the first), and is judged."""
    log_path = tmp_path / "shadow.jsonl"
    options = ShadowOptions((make_policy("bestfit"), make_policy("fgd")), log_path, 0.01)
    runner = ShadowRunner(options, "bestfit")
    sent: list[SnapshotUpdate] = []
    build = runner.sender.update

    def update(snap: Snapshot) -> SnapshotUpdate:
        sent.append(build(snap))
        if len(sent) == 2:
            return replace(sent[-1], task_mix={"x": lambda: 0})  # type: ignore[dict-item]
        return sent[-1]

    monkeypatch.setattr(runner.sender, "update", update)

    async def scenario() -> None:
        async with Worker(runner) as worker:
            await worker.offer_until(lambda: len(sent) >= 3, "a third update")
            await worker.offer_until(lambda: runner.stats["fgd"].evaluations >= 2, "a verdict")

    asyncio.run(scenario())
    assert [u.base for u in sent[:3]] == [None, 1, None]
    assert errors(runner) == {"bestfit": 1, "fgd": 1}
    assert causes_logged(caplog, "could not be judged") == 1
    rows = logged(log_path)
    judged = sorted({r["at"] for r in rows})
    assert len(judged) >= 2 and all(r["differing"] == 0 for r in rows if r["policy"] == "bestfit")


def test_shadows_that_raise_in_the_child_cost_their_verdicts_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Beside a shadow that raises and one that exits, best-fit is judged on snapshot
    after snapshot; the two count an error on every snapshot and are logged once each."""
    log_path = tmp_path / "shadow.jsonl"
    policies = (RaisesInChild(), ExitsInChild(), make_policy("bestfit"))
    runner = ShadowRunner(ShadowOptions(policies, log_path, 0.01), "bestfit")  # type: ignore[arg-type]

    async def scenario() -> None:
        async with Worker(runner) as worker:
            await worker.offer_until(lambda: len(logged(log_path)) >= 3, "three verdicts")

    asyncio.run(scenario())
    judged = runner.stats["bestfit"].evaluations
    assert errors(runner) == {"raises": judged, "exits": judged, "bestfit": 0}
    assert causes_logged(caplog, "shadow policy raises failed") == 1
    assert causes_logged(caplog, "shadow policy exits failed") == 1
    rows = logged(log_path)
    assert {r["policy"] for r in rows} == {"bestfit"} and len({r["at"] for r in rows}) >= 3


def test_a_shadow_log_that_cannot_be_opened_costs_its_lines_until_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log's directory does not exist: each verdict's line is lost and counted, the
    shadows go on judging; once the directory exists the next verdict is logged."""
    log_path = tmp_path / "not-yet" / "shadow.jsonl"
    runner = ShadowRunner(ShadowOptions((make_policy("bestfit"),), log_path, 0.01), "bestfit")
    stats = runner.stats["bestfit"]

    async def scenario() -> tuple[int, int]:
        async with Worker(runner) as worker:
            await worker.offer_until(lambda: stats.errors >= 2, "verdicts without a log")
            log_path.parent.mkdir()
            await worker.offer_until(lambda: len(logged(log_path)) >= 1, "a logged verdict")
            lost, judged = stats.errors, stats.evaluations
            await worker.offer_until(lambda: len(logged(log_path)) >= 3, "more verdicts")
            return lost, judged

    lost, judged = asyncio.run(scenario())
    assert 2 <= lost < judged  # each verdict before the directory existed, counted
    assert stats.errors == lost  # and none since
    assert causes_logged(caplog, "cannot be written") == 1
    assert all(r["policy"] == "bestfit" and r["differing"] == 0 for r in logged(log_path))
