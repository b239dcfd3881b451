"""Pending jobs kept from pass to pass (`PendingJobs`): a job's view keeps its identity
while its pods are unchanged (the shadow mirror relies on it), is rebuilt when a pod
changes what the job is made of, and every pass equals `build_workload`'s, whatever
happened to the pods in between."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.dra.inventory import MECHANISM_LABEL, SLICES, DraState
from controller.kube.objects import GANG_SIZE, JOB_LABEL, RUNTIME, PodRecord, pod_from_json
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.workload import PendingJobs, Workload, build_workload
from policies import ClusterState, Context, FixedDuration, Snapshot, make_policy
from tests.conftest import node
from tests.test_controller_scheduler import pod_json
from tests.test_dra import device, slice_json


def manifest(
    name: str,
    gpus: str = "1",
    labels: dict[str, str] | None = None,
    notes: dict[str, str] | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """A pending pod asking for `gpus` (as written: it may not be a number)."""
    pod = pod_json(name, labels=labels, notes=notes)
    pod["metadata"]["resourceVersion"] = str(version)
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = gpus
    return pod


def pods_of(*manifests: dict[str, Any]) -> dict[str, PodRecord]:
    return {m["metadata"]["name"]: pod_from_json(m) for m in manifests}


def views_by_id(jobs: PendingJobs, work: Workload) -> dict[str, Any]:
    return {job.spec.id: jobs.view(job) for job in work.pending}


def test_an_unchanged_job_keeps_its_view_and_a_changed_one_is_rebuilt() -> None:
    """Four single-pod jobs. Pass 2: the same records, then records decoded anew with a
    new resourceVersion only: every view is the same object, and the jobs hold the new
    records. Pass 3: a label, an annotation (runtime 90 s) and the GPU request change on
    three pods: those three views are new and say so; the fourth is the same object."""
    jobs = PendingJobs(WholeGpu())
    seq = {f"u-{n}": i for i, n in enumerate("abcd")}
    pods = pods_of(*(manifest(n) for n in "abcd"))
    first = views_by_id(jobs, jobs.workload(pods.values(), seq))
    same = views_by_id(jobs, jobs.workload(pods.values(), seq))
    assert same == first and all(same[jid] is first[jid] for jid in first)
    echoed = pods_of(*(manifest(n, version=2) for n in "abcd"))
    work = jobs.workload(echoed.values(), seq)
    again = views_by_id(jobs, work)
    assert all(again[jid] is first[jid] for jid in first)
    assert all(p is echoed[p.name] for job in work.pending for p in job.pods)

    changed = {
        **echoed,
        **pods_of(
            manifest("a", labels={"team": "vision"}, version=3),
            manifest("b", notes={RUNTIME: "90s"}, version=3),
            manifest("c", gpus="2", version=3),
        ),
    }
    after = views_by_id(jobs, jobs.workload(changed.values(), seq))
    assert [jid for jid in first if after[jid] is first[jid]] == ["ns/d"]
    assert after["ns/b"].spec.work == FixedDuration(90.0)
    assert after["ns/c"].spec.task.num_gpus == 2
    assert after == views_by_id(jobs, build_workload(changed.values(), seq, WholeGpu()))


def test_a_pass_over_the_same_records_is_the_last_queue_unless_arrival_order_moved() -> None:
    """The same records again: the last queue, as a list of the receiver's own (the
    scheduler's changes do not reach the next pass). The same records with the arrival
    numbers reversed: the queue reversed, as `build_workload` orders it."""
    jobs = PendingJobs(WholeGpu())
    pods = list(pods_of(*(manifest(n) for n in "abc")).values())
    seq = {f"u-{n}": i for i, n in enumerate("abc")}
    for _ in range(2):
        jobs.workload(pods, seq).pending.clear()
    assert [j.spec.id for j in jobs.workload(pods, seq).pending] == ["ns/a", "ns/b", "ns/c"]
    backwards = {uid: -i for uid, i in seq.items()}
    assert [j.spec.id for j in jobs.workload(pods, backwards).pending] == ["ns/c", "ns/b", "ns/a"]


def test_a_job_decoded_before_dra_nodes_appeared_is_decoded_again() -> None:
    """A device-plugin pod's job selects the device-plugin nodes once DRA nodes exist:
    the kept job must not hide that."""
    jobs, dra = PendingJobs(WholeGpu()), DraState()
    pods = pods_of(manifest("a"))
    before = jobs.workload(pods.values(), {}, dra).pending[0]
    assert MECHANISM_LABEL not in before.spec.node_selector
    dra.replace(SLICES, [slice_json("n", [device("gpu-0")])])
    after = jobs.workload(pods.values(), {}, dra).pending[0]
    assert after.spec.node_selector[MECHANISM_LABEL] == "device-plugin"
    assert after == build_workload(pods.values(), {}, WholeGpu(), dra).pending[0]


POD_CHANGES = st.one_of(
    st.tuples(st.just("echo"), st.integers(0, 7)),
    st.tuples(st.just("gpus"), st.integers(0, 7), st.sampled_from(["1", "2", "3", "x"])),
    st.tuples(st.just("runtime"), st.integers(0, 7), st.sampled_from(["", "30s", "2m", "soon"])),
    st.tuples(st.just("gang"), st.integers(0, 7), st.sampled_from(["", "g0", "g1"])),
    st.tuples(st.just("size"), st.integers(0, 7), st.sampled_from(["", "2", "3"])),
    st.tuples(st.just("remove"), st.integers(0, 7)),
)
"""One watch event on pod `i`: the same pod decoded anew, its GPU request, runtime
annotation, gang label or gang size changed, or its removal (the next change to it
brings it back as a new arrival)."""


class Pods:
    """The cache's pending pods: a record replaced only by an event about its pod."""

    def __init__(self) -> None:
        self.fields: dict[int, dict[str, str]] = {}
        self.records: dict[int, PodRecord] = {}
        self.seq: dict[str, int] = {}
        self.version = 0

    def apply(self, change: tuple[Any, ...]) -> None:
        kind, i, *value = change
        if kind == "remove":
            self.fields.pop(i, None)
            self.records.pop(i, None)
            self.seq.pop(f"u-p{i}", None)
            return
        fields = self.fields.setdefault(i, {})
        if kind != "echo":
            fields[kind] = value[0]
        self.version += 1
        self.records[i] = pod_from_json(self._manifest(i, fields))
        self.seq.setdefault(f"u-p{i}", self.version)

    def _manifest(self, i: int, fields: dict[str, str]) -> dict[str, Any]:
        notes = {RUNTIME: fields.get("runtime", ""), GANG_SIZE: fields.get("size", "")}
        labels = {JOB_LABEL: fields.get("gang", "")}
        return manifest(
            f"p{i}",
            fields.get("gpus", "1"),
            {k: v for k, v in labels.items() if v},
            {k: v for k, v in notes.items() if v},
            self.version,
        )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(POD_CHANGES, max_size=6), min_size=1, max_size=8))
def test_every_pass_equals_the_uncached_one(passes: list[list[tuple[Any, ...]]]) -> None:
    """Passes with any watch events in between: the kept workload equals
    `build_workload`'s (jobs, rejected pods, waiting gangs), each job's view equals a
    fresh one, and best-fit decides alike on the two (in queue order, so order counts)."""
    pods, jobs = Pods(), PendingJobs(WholeGpu())
    cluster = ClusterState([node("n0", gpus=4), node("n1", gpus=2)])
    policy = make_policy("bestfit")
    for changes in passes:
        for change in changes:
            pods.apply(change)
        kept = jobs.workload(pods.records.values(), pods.seq)
        fresh = build_workload(pods.records.values(), pods.seq, WholeGpu())
        assert kept == fresh
        views = [jobs.view(job) for job in kept.pending]
        assert views == [job.view() for job in fresh.pending]
        decided = [
            policy.schedule(
                Snapshot(cluster.view(), [], pending, 10.0), Context(np.random.default_rng(0))
            ).decisions
            for pending in (views, [job.view() for job in fresh.pending])
        ]
        assert decided[0] == decided[1]
