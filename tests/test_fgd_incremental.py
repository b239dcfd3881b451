"""FGD's incremental bookkeeping equals computing from scratch: the engine's task counts
(Snapshot.task_mix) are the counts of the snapshot's jobs, a reweighted
NodeFragmentation is a fresh one, the Δ cache holds fresh Δ, and a whole replay decides
as an FGD built anew every pass from the snapshot's jobs alone (as a controller's)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    ClusterState,
    Context,
    JobSpec,
    JobStatus,
    JobView,
    Policy,
    SchedulingResult,
    Snapshot,
    TaskRequest,
    fragmentation,
    make_policy,
)
from policies.cut_fragments import CutFragments
from policies.delta_cache import DeltaCache
from policies.fgd import MODES, Fgd, FgdConfig, artifact_scores, score_bounds
from policies.fragmentation import NodeFragmentation
from policies.target_workload import TargetWorkload, workload_from_counts
from policies.task_mix import TaskKey, TaskMix, count_tasks, task_key
from simulator.engine import EngineOptions, Simulation
from tests.conftest import job, job_rows, node

T4_ONLY = frozenset({"T4"})
SHAPES: list[tuple[TaskRequest, frozenset[str] | None]] = [
    (TaskRequest(2000, 0, 1, 300), None),
    (TaskRequest(4000, 0, 1, 700), None),
    (TaskRequest(4000, 0, 1, 500), T4_ONLY),
    (TaskRequest(8000, 0, 1, 1000), None),
    (TaskRequest(8000, 0, 1, 1000), T4_ONLY),
    (TaskRequest(16000, 0, 2, 1000), None),
    (TaskRequest(12000, 0, 4, 1000), None),
    (TaskRequest(30000), None),
]
KEYS: list[TaskKey] = [task_key(task, models) for task, models in SHAPES]


def cluster() -> ClusterState:
    return ClusterState(
        [
            node("a", 8, cpu=96_000),
            node("b", 4, cpu=32_000),
            node("c", 2, "T4", cpu=64_000),
            node("d", 4, "T4", cpu=48_000),
        ]
    )


def test_task_mix_by_hand() -> None:
    """Two 2-replica jobs and one single of the same shape are 5 tasks; the shape is
    gone once its jobs are; removing more than was added is refused."""
    two = job("two", replicas=2)
    other = job("other", replicas=2)
    single = job("single")
    mix = TaskMix()
    for spec in (two, other, single):
        mix.add(spec)
    assert dict(mix.counts()) == {(1000, 1000, 1, None): 5}
    mix.remove(two)
    mix.remove(other)
    mix.remove(single)
    assert dict(mix.counts()) == {}
    with pytest.raises(ValueError, match="job single: removed from the task mix"):
        mix.remove(single)


@settings(max_examples=60)
@given(steps=st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), st.integers(1, 3)), max_size=40))
def test_task_mix_counts_what_a_recount_counts(steps) -> None:
    """Arrivals and departures in any order (a step adds a job, or removes it when it is
    already there): the kept counts and their workload equal a recount of the jobs."""
    mix, present = TaskMix(), {}
    for index, replicas in steps:
        task, models = SHAPES[index]
        spec = JobSpec(f"{index}-{replicas}", 0.0, task, job("x").work, replicas=replicas)
        spec = dataclasses.replace(spec, allowed_models=models)
        if spec.id in present:
            mix.remove(present.pop(spec.id))
        else:
            mix.add(spec)
            present[spec.id] = spec
        assert mix.counts() == count_tasks(present.values())
        if present:
            assert workload_from_counts(mix.counts()) == workload_from_counts(
                count_tasks(present.values())
            )


COUNTS = st.lists(st.integers(0, 30), min_size=len(SHAPES), max_size=len(SHAPES)).filter(any)
"""Task counts per shape of SHAPES: a live workload (types drop out at count 0)."""
CHANGES = st.lists(
    st.tuples(st.integers(0, len(SHAPES) - 1), st.integers(0, 3), st.booleans()), max_size=6
)
"""(shape, node, release?) steps applied to the cluster between two workloads."""
ASKED = st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True).map(sorted)
"""The nodes Δ is asked for after a step (a policy asks for its candidates only)."""


def workload_of(counts: list[int], coverage: float) -> TargetWorkload:
    return workload_from_counts(dict(zip(KEYS, counts, strict=True)), coverage)


def change_state(state: ClusterState, changes: list, held: list) -> None:
    """Place a shape's task on a node where it fits, or release an earlier one."""
    for index, node_index, release in changes:
        if release and held:
            state.release(*held.pop(index % len(held)))
            continue
        task, _ = SHAPES[index]
        gpus = np.flatnonzero(state.gpu_free[node_index] >= task.gpu_milli)
        if task.num_gpus and gpus.size < task.num_gpus:
            continue
        if state.cpu_free[node_index] < task.cpu_milli:
            continue
        chosen = tuple(int(g) for g in gpus[: task.num_gpus])
        args = (node_index, chosen, task.gpu_milli if chosen else 0, task.cpu_milli, 0)
        state.allocate(*args)
        held.append(args)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.tuples(COUNTS, CHANGES, ASKED), min_size=1, max_size=12),
    coverage=st.sampled_from([0.8, 0.95, 1.0]),
    scarcity=st.booleans(),
)
def test_reweighted_fragmentation_and_cached_deltas_equal_fresh_ones(
    history, coverage, scarcity
) -> None:
    """Workloads whose shares (and often order, sometimes types) change between passes,
    with placements and releases in between, Δ asked for some nodes at a time (so rows
    go stale and miss reweights unevenly): what the kept NodeFragmentation and
    DeltaCache hold for the nodes asked for, and after a whole `sync` for all, equals a
    NodeFragmentation built for that workload and state, exactly (the same floats)."""
    state, held = cluster(), []
    kept: NodeFragmentation | None = None
    cache: DeltaCache | None = None
    for counts, changes, asked in history:
        change_state(state, changes, held)
        workload = workload_of(counts, coverage)
        if kept is None or cache is None or not kept.reweight(workload):
            kept = NodeFragmentation(workload, scarcity)
            cache = DeltaCache(kept, shapes=256)
        fresh = NodeFragmentation(workload, scarcity)
        fresh.sync(state)
        nodes = np.array(asked, dtype=np.int64)
        for task, _ in SHAPES:
            np.testing.assert_array_equal(
                cache.get(task, state, nodes), fresh.placement_deltas(state, task, nodes)
            )
        order = kept.order  # kept columns in the first workload's order
        for name in ("small", "fit", "amount"):  # the nodes asked for are brought up to date
            kept_rows = getattr(kept.terms, name)[nodes][:, order]
            np.testing.assert_array_equal(kept_rows, getattr(fresh.terms, name)[nodes])
        kept.sync(state)  # and the others, left as they were, catch up when synced whole
        for name in ("small", "fit", "amount"):
            kept_terms = getattr(kept.terms, name)[:, order]
            np.testing.assert_array_equal(kept_terms, getattr(fresh.terms, name))
        np.testing.assert_array_equal(kept.terms.idle, fresh.terms.idle)
        np.testing.assert_array_equal(kept.type_totals[order], fresh.type_totals)
        np.testing.assert_array_equal(kept.delta_weights[order], fresh.delta_weights)
        assert kept.cluster_amount() == fresh.cluster_amount()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.tuples(COUNTS, CHANGES, ASKED), min_size=1, max_size=12),
    coverage=st.sampled_from([0.5, 0.8, 0.95]),
)
def test_kept_cut_fragments_equal_fresh_ones(history, coverage) -> None:
    """The cut types' fragments kept across workloads, placements and releases (some
    under one workload, so kept rows go stale), asked for some nodes at a time, equal
    those of a `CutFragments` built for that workload and state, exactly."""
    state, held = cluster(), []
    kept = CutFragments(shapes=256)
    for counts, changes, asked in history:
        workload = workload_of(counts, coverage)
        kept.use(workload)
        for step in (changes[: len(changes) // 2], changes[len(changes) // 2 :]):
            change_state(state, step, held)
            fresh = CutFragments(shapes=256)
            fresh.use(workload)
            assert kept.share == fresh.share
            if workload.cut:
                for task, _ in SHAPES:
                    nodes = fitting(state, task, asked)
                    if nodes.size:
                        kept_change = kept.change(task, state, nodes)
                        fresh_change = fresh.change(task, state, nodes)
                        np.testing.assert_array_equal(kept_change, fresh_change)


def fitting(state: ClusterState, task: TaskRequest, asked: list[int]) -> np.ndarray:
    """The nodes of `asked` with room for `task` (a policy asks for candidates only)."""
    room = [n for n in asked if state.cpu_free[n] >= task.cpu_milli]
    if task.num_gpus:
        room = [n for n in room if (state.gpu_free[n] >= task.gpu_milli).sum() >= task.num_gpus]
    return np.array(room, dtype=np.int64)


def test_a_reweight_keeps_the_terms_and_adds_a_column_per_new_type(monkeypatch) -> None:
    """Swapping two types' popularity maps the workload's types to the kept columns
    (5:3 becomes 3:5, so type 0 is now column 1) and recomputes no node; a third type
    gets a third column; a workload that would leave more than SPARE_TYPES columns
    unused is refused (the caller builds a new one)."""
    state = cluster()
    first = workload_of([5, 3, 0, 0, 0, 0, 0, 0], 1.0)
    swapped = workload_of([3, 5, 0, 0, 0, 0, 0, 0], 1.0)
    kept = NodeFragmentation(first)
    kept.sync(state)
    stamps = kept.stamp.copy()
    assert kept.reweight(swapped)
    assert kept.order.tolist() == [1, 0]
    assert kept.workload == swapped and kept.weights_version == 1
    assert kept.arrays.prob.tolist() == [3 / 8, 5 / 8]  # per kept column
    kept.sync(state)
    np.testing.assert_array_equal(kept.stamp, stamps)  # nothing recomputed
    assert kept.reweight(workload_of([5, 3, 2, 0, 0, 0, 0, 0], 1.0))
    assert kept.order.tolist() == [0, 1, 2] and kept.columns_version == 1
    assert kept.terms.amount.shape == (state.num_nodes, 3)
    assert kept.arrays.prob.tolist() == [0.5, 0.3, 0.2]
    monkeypatch.setattr(fragmentation, "SPARE_TYPES", 1)
    assert kept.reweight(workload_of([0, 1, 1, 0, 0, 0, 0, 0], 1.0))  # one column unused
    only_new = workload_of([0, 0, 0, 1, 0, 0, 0, 0], 1.0)
    assert not kept.reweight(only_new)  # would leave three of four columns unused
    assert kept.workload != only_new


class CheckedMix(Policy):
    """Wraps a policy; at every pass checks the host's task counts against its jobs."""

    def __init__(self, inner: Policy) -> None:
        super().__init__()
        self.inner = inner
        self.round_s = inner.round_s
        self.passes = 0

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        jobs = [view.spec for view in (*snapshot.pending, *snapshot.running)]
        assert snapshot.task_mix is not None
        assert snapshot.task_mix == count_tasks(jobs)
        self.passes += 1
        return self.inner.schedule(snapshot, ctx)


CheckedMix.name = "test-checked-mix"  # after the body: not registered


class FromScratch(Policy):
    """FGD as a controller runs it: built anew every pass, its workload counted from the
    snapshot's jobs (no task counts), nothing kept from earlier passes."""

    def __init__(self, config: FgdConfig) -> None:
        super().__init__()
        self.fgd_config = config

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        alone = dataclasses.replace(snapshot, task_mix=None)
        return Fgd(self.fgd_config).schedule(alone, ctx)


FromScratch.name = "test-fgd-from-scratch"

JOBS = st.lists(
    st.tuples(
        st.floats(0, 400),  # submit
        st.integers(0, len(SHAPES) - 1),
        st.integers(1, 2),  # replicas
        st.floats(1, 300),  # duration
    ),
    min_size=1,
    max_size=30,
)


def replay_jobs(shapes: list) -> list[JobSpec]:
    specs = []
    for i, (submit, index, replicas, duration) in enumerate(shapes):
        task, models = SHAPES[index]
        spec = job(f"j{i:02d}", submit=submit, duration=duration, replicas=replicas)
        specs.append(dataclasses.replace(spec, task=task, allowed_models=models))
    return specs


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=JOBS,
    policy=st.sampled_from(["fgd", "las", "fifo"]),
    cancels=st.lists(st.tuples(st.integers(0, 29), st.floats(0, 500)), max_size=4),
)
def test_the_engine_keeps_the_counts_of_its_snapshot_jobs(shapes, policy, cancels) -> None:
    """Arrivals, completions, LAS's preemptions and cancellations (pending or running):
    at every pass the engine's counts are the snapshot's jobs' counts."""
    jobs = replay_jobs(shapes)
    checked = CheckedMix(make_policy(policy))
    sim = Simulation([node("a", 8, cpu=96_000), node("c", 4, "T4")], jobs, checked)
    for index, at in cancels:
        job_id = f"j{index % len(jobs):02d}"
        sim.env.timeout(at).callbacks.append(lambda _e, j=job_id: sim.cancel(j, "cancelled"))
    sim.run()
    assert checked.passes > 0
    assert sim.task_mix.counts() == count_tasks(
        [job.spec for job in (*sim.pending.values(), *sim.running.values())]
    )


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=JOBS,
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 3),
    coverage=st.sampled_from([0.6, 0.95]),
)
def test_a_replay_decides_as_fgd_built_anew_every_pass(shapes, mode, seed, coverage) -> None:
    """The same trace through the kept FGD (engine's counts, reweighted terms, cached Δ
    and cut types' fragments) and through an FGD rebuilt every pass from the snapshot's
    jobs: the same job rows (placements, start and end times). A coverage of 0.6 leaves
    more types to the cut, whose fragments the default's tie rule weighs."""
    jobs = replay_jobs(shapes)
    nodes = [node("a", 8, cpu=96_000), node("b", 4, cpu=32_000), node("c", 4, "T4")]
    rows = []
    config = FgdConfig(mode=mode, coverage=coverage)
    for policy in (Fgd(config), FromScratch(config)):
        recorder = Simulation(nodes, jobs, policy, EngineOptions(seed=seed)).run()
        rows.append(job_rows(recorder))
    assert rows[0] == rows[1]
    placed = [row for row in rows[0].values() if row["placement"]]
    assert placed or not jobs  # the property is about real placements


def test_counts_from_the_snapshot_when_the_host_keeps_none() -> None:
    """A snapshot without task counts (the controller's): FGD counts its jobs (two
    whole-GPU tasks and a half-GPU one: 2/3 and 1/3); with counts, it takes them as
    given (3 half-GPU tasks to 1 whole: 3/4 and 1/4)."""
    specs = [job("s", milli=500), job("w1"), job("w2")]
    views = [JobView(spec, JobStatus.PENDING) for spec in specs]
    policy, state = Fgd(), cluster()
    counted = policy._workload_for(Snapshot(state.view(), [], views, 0.0))
    assert [(t.task.gpu_milli, t.probability) for t in counted.types] == [
        (1000, pytest.approx(2 / 3)),
        (500, pytest.approx(1 / 3)),
    ]
    mix = {(1000, 500, 1, None): 3, (1000, 1000, 1, None): 1}
    given_mix = policy._workload_for(Snapshot(state.view(), [], views, 0.0, mix))
    assert [(t.task.gpu_milli, t.probability) for t in given_mix.types] == [
        (500, 0.75),
        (1000, 0.25),
    ]


FINITE = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=300)
@given(low=FINITE, high=FINITE, ulps=st.integers(1, 4))
def test_the_score_never_rises_with_delta(low, high, ulps) -> None:
    """What lets FGD score a node by its least-Δ slot alone: over floats, a larger Δ
    never scores higher (also a few ulps apart, where rounding could reorder them)."""
    low, high = min(low, high), max(low, high)
    near = low
    for _ in range(ulps):
        near = float(np.nextafter(near, np.inf))
    deltas = np.array([low, high, near, np.inf])
    scores = artifact_scores(deltas)
    assert scores[0] >= scores[1] and scores[0] >= scores[2] and scores[3] == -1


def test_scores_along_a_dense_grid_never_rise() -> None:
    """Every 1/64 milli-GPU of Δ from −20,000 to 20,000 (2.56 million values)."""
    scores = artifact_scores(np.arange(-20_000 * 64, 20_000 * 64) / 64.0)
    assert (np.diff(scores) <= 0).all()
    assert scores[0] == 99 and scores[-1] == 0  # σ(20) = 1 − 2e-9: 99.99999979 → 99


@settings(max_examples=200)
@given(deltas=st.lists(FINITE, min_size=1, max_size=20))
def test_score_bounds_classify_as_the_score_does(deltas) -> None:
    """A Δ scores at least k exactly when it is below bounds[k], for every k, at random
    values and at each bound and its float neighbours."""
    bounds = score_bounds()
    edges = bounds[1:]
    values = np.concatenate(
        (deltas, edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf))
    )
    scores = artifact_scores(values)
    for k in range(101):
        np.testing.assert_array_equal(scores >= k, values < bounds[k])
    below = (values[:, None] < bounds[None, 1:]).sum(axis=1)
    np.testing.assert_array_equal(below, scores)  # how FGD reads the best score
    assert bounds[50] == pytest.approx(0.0, abs=1e-9)  # σ(0) = ½: 50 up to Δ = 0
