"""Snapshots sent to the shadow child as updates (controller.shadow.mirror): what the
child rebuilds is the live snapshot, update after update, through lost updates and a
child that restarts; shadows judge the rebuilt snapshots exactly as they judged whole
pickled ones; and an update carries only what changed."""

from __future__ import annotations

import contextlib
import pickle
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.shadow.mirror import (
    MirrorOutOfStep,
    NodeRows,
    SnapshotMirror,
    SnapshotSender,
    SnapshotUpdate,
)
from controller.shadow.runner import ShadowJudge, Verdict, live_plan
from policies import (
    ClusterState,
    Context,
    JobStatus,
    JobView,
    Place,
    SchedulingResult,
    Snapshot,
    make_policy,
)
from policies.placement import allocation_shape
from tests.conftest import job, node

SIZES = ((1, 1000), (2, 1000), (4, 1000), (1, 500), (8, 1000))
"""(GPUs, milli-GPU per GPU) of the jobs the scenarios submit (8 GPUs never fit)."""


class LiveCluster:
    """A small live host: jobs arrive, a best-fit pass places what fits, jobs finish,
    running jobs' views change (attained service), and its snapshot is what the
    scheduler would offer (the cluster copied, as `ShadowRunner.offer` copies it)."""

    def __init__(self) -> None:
        models = ("V100", "A100", "V100", "T4", "A100", "V100")
        self.cluster = ClusterState([node(f"n{i}", gpus=4, model=m) for i, m in enumerate(models)])
        self.running: dict[str, JobView] = {}
        self.pending: list[JobView] = []
        self.now = 0.0
        self.count = 0
        self.live = make_policy("bestfit")
        self.result = SchedulingResult()

    def snapshot(self) -> Snapshot:
        """Views keep their identity while unchanged, as the controller keeps them
        (`RunningJobs`, `PendingJobs`); `echo` rebuilds them equal."""
        return Snapshot(
            self.cluster.copy(), list(self.running.values()), list(self.pending), self.now
        )

    def echo(self) -> None:
        """Every view rebuilt, equal (a host that decoded its jobs again)."""
        self.pending = [replace(view) for view in self.pending]
        self.running = {jid: replace(view) for jid, view in self.running.items()}

    def submit(self, size: int, early: bool) -> None:
        """A job of SIZES[size]; `early`: submitted before the queue's first (it queues
        ahead of the others)."""
        gpus, milli = SIZES[size % len(SIZES)]
        self.count += 1
        submit = self.now - 1000.0 if early else self.now
        spec = job(f"j{self.count}", gpus=gpus, milli=milli, submit=max(0.0, submit))
        view = JobView(spec, JobStatus.PENDING, queued_since=spec.submit_time)
        self.pending = sorted([*self.pending, view], key=lambda v: v.spec.submit_time)

    def schedule(self) -> None:
        """A best-fit pass on the live snapshot; its placements start."""
        self.now += 5.0
        snapshot = self.snapshot()
        self.result = self.live.schedule(snapshot, Context(np.random.default_rng(0)))
        started = {}
        for decision in self.result.decisions:
            if not isinstance(decision, Place):
                continue
            view = next(v for v in self.pending if v.id == decision.job_id)
            for task in decision.placement.tasks:
                node_index = self.cluster.node_index[task.node]
                task_request = view.spec.task
                self.cluster.allocate(
                    node_index, task.gpus, task.gpu_milli, task_request.cpu_milli, 1000
                )
            started[view.id] = JobView(
                view.spec,
                JobStatus.RUNNING,
                decision.placement,
                allocation_shape(decision.placement, self.cluster),
                started_at=self.now,
                service_since=self.now,
                queued_since=view.queued_since,
            )
        self.pending = [v for v in self.pending if v.id not in started]
        self.running.update(started)

    def finish(self, which: int) -> None:
        if not self.running:
            return
        view = self.running.pop(list(self.running)[which % len(self.running)])
        assert view.placement is not None
        for task in view.placement.tasks:
            node_index = self.cluster.node_index[task.node]
            self.cluster.release(node_index, task.gpus, task.gpu_milli, 1000, 1000)

    def rebuild(self, join: bool) -> None:
        """A node joins, or one is relabelled (as many nodes as before): the host builds
        its state anew (a new stamp counter) and charges the running jobs on it again."""
        nodes = list(self.cluster.nodes)
        if join:
            nodes.append(node(f"x{len(nodes)}", gpus=4, model="T4"))
        else:
            nodes[0] = replace(nodes[0], labels={"zone": str(self.count)})
        self.cluster = ClusterState(nodes)
        for view in self.running.values():
            assert view.placement is not None
            for task in view.placement.tasks:
                node_index = self.cluster.node_index[task.node]
                self.cluster.allocate(node_index, task.gpus, task.gpu_milli, 1000, 1000)

    def touch(self, which: int) -> None:
        """A running job's view changes (its service was recorded): same id, new view."""
        if self.running:
            jid = list(self.running)[which % len(self.running)]
            view = self.running[jid]
            self.running[jid] = replace(view, attained_gpu_s=view.attained_gpu_s + 1.0)


def over_the_wire(update: SnapshotUpdate) -> SnapshotUpdate:
    update = pickle.loads(pickle.dumps(update))
    assert isinstance(update, SnapshotUpdate)
    return update


def assert_same_snapshot(rebuilt: Snapshot, live: Snapshot) -> None:
    assert rebuilt.now == live.now
    assert rebuilt.task_mix == live.task_mix
    assert list(rebuilt.running) == list(live.running)
    assert list(rebuilt.pending) == list(live.pending)
    assert rebuilt.cluster.nodes == live.cluster.nodes
    everything = np.arange(live.cluster.num_nodes)
    ours, theirs = rebuilt.cluster.node_rows(everything), live.cluster.node_rows(everything)
    for name, rows in theirs.items():
        assert np.array_equal(ours[name], rows), name


def deliver(sender: SnapshotSender, mirror: SnapshotMirror, snapshot: Snapshot) -> Snapshot:
    """As the runner sends: an update the child refuses as out of step goes again whole."""
    update = sender.update(snapshot)
    try:
        rebuilt = mirror.apply(over_the_wire(update))
    except MirrorOutOfStep:
        sender.reset()
        update = sender.update(snapshot)
        assert update.base is None
        rebuilt = mirror.apply(over_the_wire(update))
    sender.confirm(update)
    return rebuilt


CHANGES = ("submit", "early", "schedule", "finish", "touch", "echo", "join", "relabel")
DELIVERIES = ("none", "send", "lost", "unanswered", "restart")
STEPS = st.lists(
    st.tuples(st.sampled_from(CHANGES), st.integers(0, 50), st.sampled_from(DELIVERIES)),
    max_size=40,
)


def change(live: LiveCluster, what: str, which: int) -> None:
    if what in ("submit", "early"):
        live.submit(which, early=what == "early")
    elif what == "schedule":
        live.schedule()
    elif what == "finish":
        live.finish(which)
    elif what in ("join", "relabel"):
        live.rebuild(join=what == "join")
    elif what == "echo":
        live.echo()
    else:
        live.touch(which)


@given(STEPS)
def test_the_child_rebuilds_every_snapshot_it_is_sent(steps: list[tuple[str, int, str]]) -> None:
    """From a cluster with jobs running and waiting: random arrivals (some queueing
    ahead of the rest), passes, finishes, changed views, nodes joining or relabelled
    (the host's state built anew, its stamps unrelated to the last). After each change the
    snapshot is sent, or not, or lost on the way, or applied but never answered (the
    sender cannot tell which), or the child restarts (its copy gone, the sender not
    told) before it is sent. Every snapshot sent is rebuilt exactly, at once or, refused
    as out of step, from the whole snapshot sent next. A policy's scratch copy carried
    from one rebuilt snapshot to the next stays equal to the cluster it is synced from
    (the child stamps the rows it writes with its own counter)."""
    live = LiveCluster()
    for size in range(8):
        live.submit(size, early=False)
    live.schedule()
    sender, mirror = SnapshotSender(), SnapshotMirror()
    scratch: ClusterState | None = None
    for what, which, delivery in steps:
        change(live, what, which)
        if delivery == "lost":
            sender.update(live.snapshot())
        elif delivery == "unanswered":
            with contextlib.suppress(MirrorOutOfStep):
                mirror.apply(over_the_wire(sender.update(live.snapshot())))
        elif delivery == "restart":
            mirror = SnapshotMirror()
        elif delivery == "send":
            snapshot = live.snapshot()
            rebuilt = deliver(sender, mirror, snapshot)
            assert_same_snapshot(rebuilt, snapshot)
            scratch = rebuilt.cluster.scratch(reuse=scratch)
            everything = np.arange(live.cluster.num_nodes)
            ours = scratch.node_rows(everything)
            for name, rows in rebuilt.cluster.node_rows(everything).items():
                assert np.array_equal(ours[name], rows), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shadows_judge_rebuilt_snapshots_as_they_judged_whole_ones(seed: int) -> None:
    """The same 40 live snapshots (random arrivals, passes, finishes and changed views)
    judged by two children's worth of shadows: one sent each snapshot whole and pickled
    (as before updates), one sent updates, with a lost update and a restart on the way.
    Every verdict is the same, policy by policy, snapshot by snapshot; and the shadows
    placed jobs and differed from the live best-fit, so the verdicts say something."""
    names = ("bestfit", "fgd", "las", "sia", "gavel")
    whole = ShadowJudge([make_policy(n) for n in names], seed=seed)
    updated = ShadowJudge([make_policy(n) for n in names], seed=seed)
    sender, mirror = SnapshotSender(), SnapshotMirror()
    rng = np.random.default_rng(seed)
    live = LiveCluster()
    judged: list[list[Verdict]] = []
    for step in range(40):
        change(live, str(rng.choice(CHANGES)), int(rng.integers(50)))
        if step == 20:
            sender.update(live.snapshot())  # lost on the way
        if step == 30:
            mirror = SnapshotMirror()  # the child restarted
        snapshot = live.snapshot()
        plan = live_plan(live.result)
        expected, failed = whole.judge(pickle.loads(pickle.dumps(snapshot)), plan)
        assert failed == {}
        verdicts, failed = updated.judge(deliver(sender, mirror, snapshot), plan)
        assert failed == {}
        assert verdicts == expected, step
        judged.append(verdicts)
    assert sum(v.placed for step in judged for v in step) > 0
    assert sum(v.differing for step in judged for v in step if v.policy != "bestfit") > 0


def test_an_update_carries_only_what_changed() -> None:
    """Eight jobs wait and a pass places some; that snapshot goes whole. Then one 1-GPU
    job arrives and the next pass places it on one node, and one running job's view
    changes, and every other view is rebuilt equal: the update holds those two running
    views, no pending view, the one node's rows, and every id in order."""
    live = LiveCluster()
    for size in range(8):
        live.submit(size, early=False)
    live.schedule()
    sender, mirror = SnapshotSender(), SnapshotMirror()
    first = sender.update(live.snapshot())
    assert first.base is None
    assert isinstance(first.cluster, ClusterState)
    assert first.views == 8
    mirror.apply(over_the_wire(first))
    sender.confirm(first)

    before = live.snapshot()
    live.touch(0)
    live.submit(0, early=True)
    live.schedule()
    live.echo()
    [newcomer] = [jid for jid in live.running if before.job(jid) is None]
    snapshot = live.snapshot()
    update = sender.update(snapshot)
    assert update.base == first.number
    assert set(update.running.changed) == {newcomer, next(iter(live.running))}
    assert update.pending.changed == {}
    assert update.running.ids == tuple(live.running)
    assert update.pending.ids == tuple(v.id for v in live.pending)
    [task] = live.running[newcomer].placement.tasks  # type: ignore[union-attr]
    assert isinstance(update.cluster, NodeRows)
    assert update.cluster.nodes.tolist() == [live.cluster.node_index[task.node]]
    assert_same_snapshot(mirror.apply(over_the_wire(update)), snapshot)


def test_an_update_on_a_copy_the_child_lacks_is_refused() -> None:
    """A child that restarted (an empty mirror) refuses an update built on a copy it
    never had, and then takes the whole snapshot."""
    live = LiveCluster()
    live.submit(0, early=False)
    sender = SnapshotSender()
    sender.confirm(sender.update(live.snapshot()))
    live.schedule()
    with pytest.raises(MirrorOutOfStep, match="builds on 1"):
        SnapshotMirror().apply(sender.update(live.snapshot()))
    sender.reset()
    snapshot = live.snapshot()
    assert_same_snapshot(SnapshotMirror().apply(sender.update(snapshot)), snapshot)
