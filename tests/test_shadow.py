"""Shadow policies on live snapshots (controller.shadow), without an API server: the
verdicts, the one-snapshot slot that drops under load, the log and the metrics. The
real-apiserver run is tests/kube/test_kube_shadow.py."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.shadow.cli import shadow_options
from controller.shadow.log import read_shadow_log
from controller.shadow.metrics import SHADOW_METRICS, ShadowCollector
from controller.shadow.runner import SHADOW_NICENESS, ShadowOptions, ShadowRunner
from policies import (
    ClusterState,
    Context,
    JobStatus,
    JobView,
    Place,
    Placement,
    SchedulingResult,
    Snapshot,
    TaskPlacement,
    make_policy,
)
from tests.conftest import job, node


def snapshot(now: float = 100.0) -> Snapshot:
    """n0 has 1 GPU free (3 of 4 held), n1 all 4; jobs of 1, 2 and 4 GPUs wait."""
    state = ClusterState([node("n0", gpus=4), node("n1", gpus=4)])
    state.allocate(0, (0, 1, 2), 1000, 0, 0)
    pending = [
        JobView(job(f"j{i}", gpus=g), JobStatus.PENDING, queued_since=now - 10 * (i + 1))
        for i, g in enumerate((1, 2, 4))
    ]
    return Snapshot(cluster=state.view(), running=[], pending=pending, now=now)


def live(policy: str, snap: Snapshot) -> SchedulingResult:
    return make_policy(policy).schedule(snap, Context(np.random.default_rng(0)))


def test_the_live_policy_as_its_own_shadow_never_differs() -> None:
    snap = snapshot()
    result = live("bestfit", snap)
    runner = ShadowRunner(ShadowOptions((make_policy("bestfit"),)), "bestfit")
    [verdict] = runner.evaluate(snap, result)
    assert verdict.differing == 0
    assert verdict.decisions == sum(isinstance(d, Place) for d in result.decisions) > 0


def test_a_shadow_that_decides_otherwise_is_counted() -> None:
    """Live: nothing placed (an empty result). The best-fit shadow places j0 (1 GPU, on
    n0) and j1 (2 GPUs on n1); j2 (4 GPUs) cannot fit: 2 differing decisions, j2 left
    waiting 30 s so far."""
    snap = snapshot()
    runner = ShadowRunner(ShadowOptions((make_policy("bestfit"),)), "fifo")
    [verdict] = runner.evaluate(snap, SchedulingResult())
    assert (verdict.differing, verdict.placed, verdict.waiting) == (2, 2, 1)
    assert verdict.queueing_delay_s == 30.0
    assert verdict.fragmentation_pct >= 0.0


def test_each_shadow_sees_the_snapshot_untouched_by_the_others() -> None:
    """Best-fit then FGD on one snapshot: FGD must not see best-fit's placements (with
    them it could place nothing), and both place j0 and j1 as the live best-fit did."""
    snap = snapshot()
    runner = ShadowRunner(ShadowOptions((make_policy("bestfit"), make_policy("fgd"))), "bestfit")
    verdicts = runner.evaluate(snap, live("bestfit", snap))
    assert [(v.policy, v.placed, v.differing) for v in verdicts] == [
        ("bestfit", 2, 0),
        ("fgd", 2, 0),
    ]


def test_a_shadow_that_raises_costs_only_its_verdict() -> None:
    class Broken:
        name = "broken"

        def schedule(self, _snapshot: Snapshot, _ctx: Context) -> SchedulingResult:
            raise RuntimeError("bug")

    snap = snapshot()
    runner = ShadowRunner(ShadowOptions((Broken(), make_policy("bestfit"))), "bestfit")  # type: ignore[arg-type]
    verdicts = runner.evaluate(snap, live("bestfit", snap))
    assert [v.policy for v in verdicts] == ["bestfit"]
    assert runner.stats["broken"].errors == 1


def test_a_shadow_placing_on_a_node_that_does_not_exist_costs_only_its_verdict() -> None:
    class Astray:
        name = "astray"

        def schedule(self, _snapshot: Snapshot, _ctx: Context) -> SchedulingResult:
            task = TaskPlacement("no-such-node", (0,), 1000)
            return SchedulingResult((Place("j0", Placement((task,)), "astray"),))

    snap = snapshot()
    runner = ShadowRunner(ShadowOptions((Astray(), make_policy("bestfit"))), "bestfit")  # type: ignore[arg-type]
    verdicts = runner.evaluate(snap, live("bestfit", snap))
    assert [v.policy for v in verdicts] == ["bestfit"]
    assert runner.stats["astray"].errors == 1


def test_a_snapshot_without_jobs_is_judged_not_raised() -> None:
    """A round policy's live pass on an empty cluster offers a snapshot with no jobs: the
    fragmentation measure has no task mix to weigh, so it is 0, and the shadows still
    answer (a raise there ended the shadows' task, and with it the controller)."""
    snap = replace(snapshot(), pending=[])
    runner = ShadowRunner(ShadowOptions((make_policy("fgd"), make_policy("sia"))), "sia")
    verdicts = runner.evaluate(snap, SchedulingResult())
    assert [(v.policy, v.decisions, v.fragmentation_pct) for v in verdicts] == [
        ("fgd", 0, 0.0),
        ("sia", 0, 0.0),
    ]


def test_offers_while_busy_are_dropped_and_the_newest_is_evaluated(tmp_path: Path) -> None:
    """Three offers before the worker runs: two are dropped, the third (at t=300) is the
    one evaluated and logged; the offer copies the cluster, so changing the live state
    afterwards changes nothing the shadow sees."""
    log_path = tmp_path / "shadow.jsonl"
    options = ShadowOptions((make_policy("bestfit"), make_policy("fgd")), log_path, interval_s=0.01)
    runner = ShadowRunner(options, "bestfit")

    async def scenario() -> None:
        for now in (100.0, 200.0, 300.0):
            snap = snapshot(now)
            runner.offer(snap, live("bestfit", snap))
        worker = asyncio.create_task(runner.run())
        # The verdicts come from a child process (seconds to start on a busy machine).
        for _ in range(1200):
            if log_path.exists() and len(log_path.read_text().splitlines()) == 2:
                break
            await asyncio.sleep(0.05)
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker

    asyncio.run(scenario())
    assert (runner.offered, runner.dropped) == (3, 2)
    log = read_shadow_log(log_path)
    assert [(r["policy"], r["at"], r["live_policy"]) for r in log.rows] == [
        ("bestfit", 300.0, "bestfit"),
        ("fgd", 300.0, "bestfit"),
    ]
    assert log.rows[0]["differing"] == 0


def test_a_child_that_dies_is_replaced_and_sent_the_whole_snapshot(tmp_path: Path) -> None:
    """The child judges t=100 (sent whole), then is killed. The snapshot that finds it
    dead is lost (resending it could kill the next child too); the worker starts
    another child, which has no copy to build updates on, and the snapshots offered
    after are judged all the same, by a shadow that still agrees with the live policy."""
    log_path = tmp_path / "shadow.jsonl"
    options = ShadowOptions((make_policy("bestfit"),), log_path, interval_s=0.01)
    runner = ShadowRunner(options, "bestfit")

    def verdicts() -> int:
        return len(log_path.read_text().splitlines()) if log_path.exists() else 0

    async def offer_until_judged(now: float, count: int) -> None:
        for step in range(600):  # a child takes seconds to start on a busy machine
            if step % 10 == 0:
                snap = snapshot(now + step)
                runner.offer(snap, live("bestfit", snap))
            if verdicts() >= count:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no verdict {count}")

    async def scenario() -> None:
        others = set(multiprocessing.active_children())  # earlier tests' children
        worker = asyncio.create_task(runner.run())
        try:
            await offer_until_judged(100.0, 1)
            [child] = set(multiprocessing.active_children()) - others
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            child.join(60)
            await offer_until_judged(200.0, 2)
        finally:
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker

    asyncio.run(scenario())
    rows = read_shadow_log(log_path).rows
    assert (rows[0]["at"], rows[0]["differing"]) == (100.0, 0)
    assert rows[1]["at"] > 200.0 and rows[1]["differing"] == 0
    assert runner.stats["bestfit"].errors == 0


def test_shadows_decide_at_a_lower_cpu_priority_than_the_controller() -> None:
    """The child yields the CPU to the live loop: its niceness is the controller's + 10."""
    runner = ShadowRunner(ShadowOptions((make_policy("bestfit"),), None), "bestfit")
    pool = runner._pool()
    try:
        child = pool.submit(os.nice, 0).result(timeout=120)
    finally:
        pool.shutdown()
    assert child == min(os.nice(0) + SHADOW_NICENESS, 19)


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    path.write_text('{"at": 1}\n{"at": 2, "pol')
    assert read_shadow_log(path).skipped == 2


def test_metrics_name_every_shadow_family() -> None:
    runner = ShadowRunner(ShadowOptions((make_policy("bestfit"),)), "fifo")
    runner.evaluate(snapshot(), SchedulingResult())
    registry = CollectorRegistry()
    registry.register(ShadowCollector(runner))
    text = generate_latest(registry).decode()
    for name in SHADOW_METRICS:
        assert f"\n{name}" in f"\n{text}", name
    assert 'gpufleet_shadow_differing_decisions_total{policy="bestfit"} 2.0' in text


@pytest.mark.parametrize(
    ("names", "log", "message"),
    [
        ("", "x.jsonl", "--shadow-log needs --shadow-policies"),
        ("bestfit,bestfit", None, "names a policy twice"),
        ("nosuch", None, "nosuch"),
    ],
)
def test_bad_shadow_arguments_are_refused(names: str, log: str | None, message: str) -> None:
    args = argparse.Namespace(shadow_policies=names, shadow_log=log, shadow_interval=1.0, seed=0)
    with pytest.raises((ValueError, KeyError), match=message):
        shadow_options(args)
