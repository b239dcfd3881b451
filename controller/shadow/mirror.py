"""Live snapshots sent to the shadow child as what changed since the last one it took.

Pickling a whole snapshot for the child cost the live process ~100 ms of CPU under its
interpreter lock per judged snapshot at 500 nodes, 1,500 pending and 3,000 running jobs
(most of it in the generated `__getstate__` of the slotted view dataclasses), and the
event loop waited in that time; an update after 150 arrivals and finishes costs ~10 ms
(benchmarks/shadow_send.py measures both). Here the child
keeps its own copy of the last snapshot it was sent (`SnapshotMirror`), and the live
process (`SnapshotSender`) sends only:

- the nodes whose free resources changed (their version stamps differ from the copy
  last sent), as array rows;
- the job views the child lacks: new ones, and ones that changed (the controller keeps
  a view's identity while its job is unchanged, `RunningJobs` and `PendingJobs`, so
  identity settles nearly all of them; a view rebuilt is compared by value);
- each job list's ids in order (a list of strings pickles at C speed), from which the
  child drops the jobs gone and keeps the order.

So an update never holds more than the snapshot it stands for. The whole snapshot goes
when there is nothing to build on: the first one, after the child was replaced or fell
out of step (`MirrorOutOfStep`), and the whole cluster when the live one was built anew
(nodes came or went). An update is built on the last one the child *confirmed*, so one
lost on the way costs a bigger next update, never a wrong snapshot.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policies import ClusterState, JobView, Snapshot
from policies.cluster import IntArray
from policies.task_mix import TaskKey


class MirrorOutOfStep(Exception):
    """The child's copy is not the one an update was built on: send it whole."""


@dataclass(frozen=True)
class JobsUpdate:
    """One job list of a snapshot: its ids in order and the views the receiver lacks. A
    list in which an id repeats cannot be keyed by id and is sent `whole`."""

    ids: tuple[str, ...] = ()
    changed: Mapping[str, JobView] = field(default_factory=dict)
    whole: tuple[JobView, ...] | None = None


@dataclass(frozen=True)
class NodeRows:
    """The free resources of the nodes that changed (`ClusterState.node_rows`)."""

    nodes: IntArray
    rows: Mapping[str, IntArray]


@dataclass(frozen=True)
class SnapshotUpdate:
    number: int
    base: int | None
    """The update this one builds on; None: the receiver starts afresh."""
    now: float
    task_mix: Mapping[TaskKey, int] | None
    running: JobsUpdate
    pending: JobsUpdate
    cluster: ClusterState | NodeRows
    """The whole cluster, or the rows of the nodes that changed."""

    @property
    def views(self) -> int:
        """Job views this update carries."""
        return sum(
            len(jobs.changed) + len(jobs.whole or ()) for jobs in (self.running, self.pending)
        )


@dataclass(frozen=True)
class _Copy:
    """What the receiver holds after an update: the cluster it was built from, each
    job list's views by id."""

    number: int
    cluster: ClusterState
    running: Mapping[str, JobView]
    pending: Mapping[str, JobView]


class SnapshotSender:
    """The live side: builds each update on the last copy the child confirmed."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._confirmed: _Copy | None = None
        self._proposed: _Copy | None = None

    def update(self, snapshot: Snapshot) -> SnapshotUpdate:
        """What the child needs to rebuild `snapshot`. Its cluster must not change after
        this (the runner sends a copy taken when the snapshot was offered)."""
        base = self._confirmed
        running, running_by_id = jobs_update(snapshot.running, base.running if base else {})
        pending, pending_by_id = jobs_update(snapshot.pending, base.pending if base else {})
        cluster = snapshot.cluster
        changed = cluster.changed_since(base.cluster) if base else None
        number = next(self._numbers)
        self._proposed = _Copy(number, cluster, running_by_id, pending_by_id)
        return SnapshotUpdate(
            number,
            base.number if base else None,
            snapshot.now,
            snapshot.task_mix,
            running,
            pending,
            cluster if changed is None else NodeRows(changed, cluster.node_rows(changed)),
        )

    def confirm(self, update: SnapshotUpdate) -> None:
        """The child rebuilt `update`'s snapshot: the next update builds on it."""
        if self._proposed is not None and self._proposed.number == update.number:
            self._confirmed, self._proposed = self._proposed, None

    def reset(self) -> None:
        """The child's copy is gone or unknown: the next update is whole."""
        self._confirmed = self._proposed = None


class SnapshotMirror:
    """The child's side: the last snapshot it was sent, rebuilt from updates."""

    def __init__(self) -> None:
        self._copy: _Copy | None = None

    def apply(self, update: SnapshotUpdate) -> Snapshot:
        """The snapshot `update` stands for. Raises `MirrorOutOfStep` if it builds on a
        copy this mirror does not hold (and then holds none until a whole update)."""
        held, self._copy = self._copy, None
        known = held if held is not None and update.base == held.number else None
        if update.base is not None and known is None:
            raise MirrorOutOfStep(f"update {update.number} builds on {update.base}")
        try:
            running, running_by_id = apply_jobs(update.running, known.running if known else {})
            pending, pending_by_id = apply_jobs(update.pending, known.pending if known else {})
        except KeyError as err:
            raise MirrorOutOfStep(f"update {update.number} keeps job {err} it never sent") from err
        if isinstance(update.cluster, ClusterState):
            cluster = update.cluster.copy()  # the sender's own object, when not pickled
        elif known is not None:
            cluster = known.cluster
            cluster.set_node_rows(update.cluster.nodes, update.cluster.rows)
        else:
            raise MirrorOutOfStep(f"update {update.number} has no cluster to build on")
        self._copy = _Copy(update.number, cluster, running_by_id, pending_by_id)
        return Snapshot(cluster.view(), running, pending, update.now, update.task_mix)


def jobs_update(
    views: Sequence[JobView], known: Mapping[str, JobView]
) -> tuple[JobsUpdate, dict[str, JobView]]:
    """The update that turns `known` into `views`, and the views by id it leaves the
    receiver holding."""
    by_id = {view.id: view for view in views}
    if len(by_id) != len(views):
        return JobsUpdate(whole=tuple(views)), {}
    # Identity first: it settles the views kept while unchanged at C speed.
    other = {jid: view for jid, view in by_id.items() if known.get(jid) is not view}
    changed = {jid: view for jid, view in other.items() if not _equal(known.get(jid), view)}
    return JobsUpdate(tuple(by_id), changed), by_id


def apply_jobs(
    update: JobsUpdate, known: Mapping[str, JobView]
) -> tuple[list[JobView], dict[str, JobView]]:
    """The job list `update` stands for on top of `known`, and the views by id it holds.
    Raises KeyError for an id neither in the update nor known."""
    if update.whole is not None:
        return list(update.whole), {}
    changed = update.changed
    by_id = {jid: changed[jid] if jid in changed else known[jid] for jid in update.ids}
    return list(by_id.values()), by_id


def _equal(known: JobView | None, view: JobView) -> bool:
    if known is None:
        return False
    try:
        return bool(known == view)
    except (TypeError, ValueError):  # hints a policy defined without a plain ==: send it
        return False
