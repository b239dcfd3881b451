"""Gavel: LPs with known optima, the priority mechanism, the throughput file and generator."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ClusterState, Context, JobSpec, JobStatus, JobView, NodeSpec, TaskRequest
from policies.base import Snapshot
from policies.decisions import Decision, Place, Preempt
from policies.gavel import Gavel, GavelConfig, greedy_assignment, priority_matrix
from policies.gavel_lp import (
    effective_throughput,
    finish_time_fairness,
    max_min_fairness,
    max_sum_throughput,
    proportional_allocation,
)
from policies.jobs import AllocationShape, Placement, TaskPlacement
from policies.perf_models import PlacementThroughput
from policies.placement import take
from policies.registry import make_policy, policy_class
from simulator.clusters import NodeGroup, build_nodes
from simulator.semantics import GAVEL_GENERATED, run_semantics
from tests.conftest import job, shared_data
from tests.test_contract import apply_as_host
from traces.errors import TraceError
from traces.gavel_throughputs import generate_jobs, read_throughputs

CTX = Context(np.random.default_rng(0))


def test_max_min_gives_the_fast_gpu_to_the_job_that_gains_from_it() -> None:
    # One slow and one fast GPU. Job A runs 4× faster on the fast one, job B equally on
    # both. X_equal gives A 2.5 and B 1; B can never exceed 1 (its row sums to ≤ 1), so
    # the optimal minimum is 1, and the efficient optimum hands A the whole fast GPU.
    throughputs = np.array([[1.0, 4.0], [1.0, 1.0]])
    x = max_min_fairness(throughputs, np.ones(2), np.array([1.0, 1.0]))
    np.testing.assert_allclose(x, [[0.0, 1.0], [1.0, 0.0]], atol=1e-6)


def test_max_min_splits_one_gpu_between_equal_jobs() -> None:
    x = max_min_fairness(np.array([[3.0], [3.0]]), np.ones(2), np.array([1.0]))
    np.testing.assert_allclose(x, [[0.5], [0.5]], atol=1e-6)


def test_max_min_weights_and_scale_factors() -> None:
    # Weight 2 halves a job's normalised share, so it gets half the time of the other.
    x = max_min_fairness(
        np.array([[1.0], [1.0]]), np.ones(2), np.array([1.0]), np.array([2.0, 1.0])
    )
    np.testing.assert_allclose(x[:, 0], [2 / 3, 1 / 3], atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.1, 10.0), min_size=6, max_size=6),
    st.lists(st.sampled_from([1, 2]), min_size=3, max_size=3),
)
def test_max_min_respects_constraints_and_beats_equal_share(
    values: list[float], scale: list[int]
) -> None:
    throughputs = np.array(values).reshape(3, 2)
    sf = np.array(scale, dtype=float)
    capacity = np.array([2.0, 2.0])
    x = max_min_fairness(throughputs, sf, capacity)
    assert np.all(x >= -1e-9) and np.all(x.sum(axis=1) <= 1 + 1e-6)
    assert np.all((sf[:, None] * x).sum(axis=0) <= capacity + 1e-6)
    # Gavel's objective, min_i T_i(X)·sf_i / T_i(X_equal), is at least that of the equal
    # share scaled down until it fits the capacity at these scale factors.
    equal = proportional_allocation(capacity, 3)
    usage = ((sf[:, None] * equal).sum(axis=0) / capacity).max()
    base = effective_throughput(throughputs, equal)

    def objective(alloc: np.ndarray) -> float:
        return float((effective_throughput(throughputs, alloc) * sf / base).min())

    # The second LP may give up a relative 1e-6 of the optimal minimum (its slack).
    assert objective(x) >= objective(equal / max(usage, 1.0)) * (1 - 2e-6) - 1e-9


def test_max_sum_throughput_puts_each_job_where_it_is_fastest() -> None:
    x = max_sum_throughput(np.array([[1.0, 4.0], [2.0, 3.0]]), np.ones(2), np.array([1.0, 1.0]))
    # Total 4 + 2 = 6 beats 1 + 3 = 4.
    np.testing.assert_allclose(x, [[0.0, 1.0], [1.0, 0.0]], atol=1e-6)


def test_finish_time_fairness_favours_the_job_that_fell_behind() -> None:
    # Equal jobs, one GPU; job 0 has waited 100 s longer, so it gets more of the GPU.
    x = finish_time_fairness(
        np.array([[1.0], [1.0]]),
        np.ones(2),
        np.array([1.0]),
        elapsed_s=np.array([200.0, 100.0]),
        isolated_elapsed_s=np.array([0.0, 0.0]),
        remaining=np.array([500.0, 500.0]),
    )
    assert x[0, 0] > x[1, 0]
    # ρ is equal at the optimum: (200 + 500/x0)/1000 = (100 + 500/x1)/1000, x0 + x1 = 1.
    rho = (np.array([200.0, 100.0]) + 500.0 / x[:, 0]) / 1000.0
    assert rho[0] == pytest.approx(rho[1], rel=1e-3)


def test_priority_favours_jobs_behind_their_share() -> None:
    x = np.array([[0.5, 0.0], [0.5, 0.0], [0.0, 0.0]])
    received = np.array([[300.0, 0.0], [100.0, 0.0], [0.0, 0.0]])
    priorities = priority_matrix(x, received)
    # Shares 3/4 and 1/4 of model 0's time: priorities 0.5/0.75 and 0.5/0.25.
    assert priorities[0, 0] == pytest.approx(2 / 3)
    assert priorities[1, 0] == pytest.approx(2.0)
    assert priorities[2, 0] == 0.0
    new = priority_matrix(np.array([[0.25]]), np.array([[0.0]]))
    assert new[0, 0] == pytest.approx(0.25e9)


def test_greedy_skips_jobs_that_do_not_fit_and_fills_idle_gpus() -> None:
    priorities = np.array([[3.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    throughputs = np.ones((3, 2))
    chosen = greedy_assignment(
        priorities, x, throughputs, np.array([2.0, 2.0, 1.0]), np.array([2.0, 1.0])
    )
    # Job 0 fills model 0; job 1 (2 GPUs) fits nowhere; job 2 takes the idle model-1 GPU.
    assert chosen == {0: 0, 2: 1}


def gavel_cluster() -> ClusterState:
    return ClusterState(build_nodes([NodeGroup("fast", 1, 1), NodeGroup("slow", 1, 1)]))


def gavel_job(job_id: str, fast: float, slow: float) -> JobSpec:
    work = PlacementThroughput(1000.0, {"fast": fast, "slow": slow})
    return JobSpec(job_id, 0.0, TaskRequest(num_gpus=1, gpu_milli=1000), work)


def test_round_places_jobs_where_the_allocation_puts_them() -> None:
    jobs = [gavel_job("a", 4.0, 1.0), gavel_job("b", 1.0, 1.0)]
    views = [JobView(j, JobStatus.PENDING) for j in jobs]
    result = Gavel().schedule(Snapshot(gavel_cluster().view(), [], views, 0.0), CTX)
    placed = {d.job_id: d.placement.tasks[0].node for d in result.decisions if isinstance(d, Place)}
    assert placed == {"a": "fast-0", "b": "slow-0"}


def test_agnostic_variant_ignores_speed() -> None:
    cfg = GavelConfig(heterogeneity_aware=False)
    assert Gavel(cfg).cfg.heterogeneity_aware is False
    with pytest.raises(ValueError, match="objective"):
        Gavel(GavelConfig(objective="fastest"))


def test_after_the_reset_two_equal_jobs_take_turns() -> None:
    """Gavel's counters: at the reset (t=3600, when the new job brings X to about 1/2
    each) every job starts with half a round (180 s), so the priorities X / (180/360)
    tie up to the LP's rounding and either job may run. A round later the one that ran
    has 180 + 360 of the 720 s counted: priority 0.5/0.75 = 2/3 against the other's
    0.5/0.25 = 2, so they swap."""
    state = ClusterState(build_nodes([NodeGroup("fast", 1, 1)]))
    specs = {
        "old": gavel_job("old", 1.0, 1.0),
        "new": dataclasses.replace(gavel_job("new", 1.0, 1.0), submit_time=3500.0),
    }
    policy = Gavel()
    views = {"old": holding(state, specs["old"], since=0.0), "new": waiting(specs["new"])}
    first = policy.schedule(snapshot_of(state, views, 3600.0), CTX)
    ran = (
        next(d.job_id for d in first.decisions if isinstance(d, Place))
        if first.decisions
        else "old"
    )
    other = "new" if ran == "old" else "old"
    state = ClusterState(build_nodes([NodeGroup("fast", 1, 1)]))
    views = {
        ran: holding(
            state, specs[ran], since=3600.0, service={"fast": 3600.0 if ran == "old" else 0.0}
        ),
        other: waiting(specs[other], service={"fast": 3600.0 if other == "old" else 0.0}),
    }
    second = policy.schedule(snapshot_of(state, views, 3960.0), CTX)
    assert {d.job_id: type(d) for d in second.decisions} == {ran: Preempt, other: Place}


def holding(
    state: ClusterState, spec: JobSpec, since: float, service: dict[str, float] | None = None
) -> JobView:
    """`spec` running on the one `fast` GPU of `state` since `since`."""
    state.allocate(0, (0,), 1000, 0, 0)
    placement = Placement((TaskPlacement("fast-0", (0,), 1000),))
    shape = AllocationShape("fast", 1, 1, gpus_per_node=(1,), gpu_models=("fast",))
    return JobView(
        spec,
        JobStatus.RUNNING,
        placement,
        shape,
        service_by_model=service or {},
        service_since=since,
    )


def waiting(spec: JobSpec, service: dict[str, float] | None = None) -> JobView:
    return JobView(spec, JobStatus.PENDING, service_by_model=service or {})


def snapshot_of(state: ClusterState, views: dict[str, JobView], now: float) -> Snapshot:
    running = [v for v in views.values() if v.status is JobStatus.RUNNING]
    pending = [v for v in views.values() if v.status is JobStatus.PENDING]
    return Snapshot(state.view(), running, pending, now)


def test_allocation_is_kept_until_the_reset_interval_passes() -> None:
    """A job that arrives within 1920 s of the last recomputation has no share yet: it
    runs only on GPUs the allocated jobs leave idle (here none), as in Gavel."""
    state = ClusterState(build_nodes([NodeGroup("fast", 1, 1)]))
    first = gavel_job("first", 1.0, 1.0)
    policy = Gavel()
    placed = policy.schedule(
        Snapshot(state.view(), [], [JobView(first, JobStatus.PENDING)], 0.0), CTX
    )
    assert [d.job_id for d in placed.decisions] == ["first"]
    state.allocate(0, (0,), 1000, 0, 0)
    placement = Placement((TaskPlacement("fast-0", (0,), 1000),))
    shape = AllocationShape("fast", 1, 1, gpus_per_node=(1,), gpu_models=("fast",))
    running = JobView(first, JobStatus.RUNNING, placement, shape, service_since=0.0)
    late = JobView(replace(gavel_job("late", 1.0, 1.0), submit_time=700.0), JobStatus.PENDING)
    for now in (720.0, 1080.0, 1800.0):  # within 1920 s: X is first's alone
        assert policy.schedule(Snapshot(state.view(), [running], [late], now), CTX).decisions == ()
    after = policy.schedule(Snapshot(state.view(), [running], [late], 1920.0), CTX)
    assert after.notes["jobs"] == 2.0 and policy._epoch is not None
    assert set(policy._epoch.allocation) == {"first", "late"}


def test_throughput_file_is_parsed_and_validated(tmp_path: Path) -> None:
    good = {
        "v100": {"('ResNet-18 (batch size 16)', 1)": {"null": 10.0}},
        "v100_unconsolidated": {"('ResNet-18 (batch size 16)', 1)": {"null": 9.0}},
        "k80": {"('ResNet-18 (batch size 16)', 1)": {"null": 2.0}},
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(good))
    table = read_throughputs(path)
    assert table.consolidated[("ResNet-18 (batch size 16)", 1)] == {"v100": 10.0, "k80": 2.0}
    assert table.unconsolidated[("ResNet-18 (batch size 16)", 1)] == {"v100": 9.0}
    jobs = generate_jobs(table, 20, 10.0, seed=1, multi_gpu=False)
    assert len(jobs) == 20 and jobs[0].submit_time == 0.0
    assert all(j.replicas == 1 and j.allowed_models == {"v100", "k80"} for j in jobs)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"v100": {"__import__('os')": {"null": 1.0}}}))
    with pytest.raises(TraceError, match="not a"):
        read_throughputs(bad)


@pytest.mark.shared_data
def test_generator_on_gavels_file_follows_its_distributions() -> None:
    table = read_throughputs(shared_data("gavel/simulation_throughputs.json"))
    assert len(table.job_types) == 26
    jobs = generate_jobs(table, 2000, 10.0, seed=0)
    scale = np.array([j.replicas for j in jobs])
    assert abs((scale == 1).mean() - 0.7) < 0.05
    multi = [j for j in jobs if j.replicas > 1]
    assert all(table.distributed(str(j.attributes["job_type"])) for j in multi)
    gaps = np.diff([j.submit_time for j in jobs])
    assert abs(gaps.mean() - 360.0) < 30.0


# -- every pod shape, placed where it fits (issue 13) ---------------------------------------


def gavel_round(
    nodes: list[NodeSpec], pending: list[JobSpec], running: Sequence[JobView] = (), now: float = 0.0
) -> dict[str, Decision]:
    """One Gavel round's decisions by job, each checked against the placement contract."""
    state = ClusterState(nodes)
    for view in running:
        assert view.placement is not None
        take(state, view.spec, view.placement)
    waiting = [JobView(s, JobStatus.PENDING) for s in pending]
    snap = Snapshot(state.view(), list(running), waiting, now)
    result = Gavel().schedule(snap, CTX)
    apply_as_host(state, snap, result)
    return {d.job_id: d for d in result.decisions}


def test_a_two_gpu_pod_gets_both_gpus_on_one_node() -> None:
    nodes = build_nodes([NodeGroup("v100", 2, 2)])
    (task,) = gavel_round(nodes, [job("p", gpus=2)])["p"].placement.tasks
    assert task.gpus == (0, 1)


def test_a_gang_spreads_whole_pods_when_no_node_takes_it_all() -> None:
    decision = gavel_round(build_nodes([NodeGroup("v100", 2, 4)]), [job("g", gpus=2, replicas=3)])
    tasks = decision["g"].placement.tasks
    assert [len(t.gpus) for t in tasks] == [2, 2, 2]
    assert sorted(Counter(t.node for t in tasks).values()) == [1, 2]


def test_the_node_is_chosen_where_the_job_fits_not_by_free_gpus_alone() -> None:
    # Fewest free GPUs says v100-0, but only v100-1 has the CPU.
    nodes = [NodeSpec("v100-0", 2000, 8000, 1, "v100"), NodeSpec("v100-1", 64_000, 8000, 4, "v100")]
    (task,) = gavel_round(nodes, [job("p", cpu=8000)])["p"].placement.tasks
    assert task.node == "v100-1"


def test_a_fractional_pod_shares_a_partly_used_gpu() -> None:
    nodes = build_nodes([NodeGroup("v100", 1, 2)])
    other = job("other", milli=500, preemptible=False)
    running = JobView(other, JobStatus.RUNNING, Placement((TaskPlacement("v100-0", (1,), 500),)))
    (task,) = gavel_round(nodes, [job("f", milli=500)], [running])["f"].placement.tasks
    assert (task.gpus, task.gpu_milli) == ((1,), 500)  # the tightest GPU that fits


def test_a_job_that_may_not_be_preempted_keeps_its_share() -> None:
    # As `test_a_job_with_its_share_yields_to_a_new_one`, but "old" may not be preempted:
    # it keeps the only GPU and "new" waits.
    placement = Placement((TaskPlacement("fast-0", (0,), 1000),))
    shape = AllocationShape("fast", 1, 1, gpus_per_node=(1,), gpu_models=("fast",))
    spec = dataclasses.replace(gavel_job("old", 1.0, 1.0), preemptible=False)
    old = JobView(
        spec,
        JobStatus.RUNNING,
        placement,
        shape,
        service_by_model={"fast": 3600.0},
        service_since=3600.0,
    )
    nodes = build_nodes([NodeGroup("fast", 1, 1)])
    assert gavel_round(nodes, [gavel_job("new", 1.0, 1.0)], [old], now=3600.0) == {}


def test_gavels_queues_and_the_sia_ports_single_queue_choose_differently() -> None:
    """Job 0 gains more on model 1 (priority 4) than on model 0 (3); job 1 wants model 0
    (2) far more than model 1 (0.1); one GPU each. The Sia artifact's single queue takes
    the highest pair first: job 0 → model 1, then job 1 → model 0. Gavel fills model 0's
    queue first (job 0, priority 3, heads it), then model 1's: job 1 gets model 1."""
    priorities = np.array([[3.0, 4.0], [2.0, 0.1]])
    x = np.full((2, 2), 0.5)
    args = (priorities, x, np.ones((2, 2)), np.ones(2), np.ones(2))
    assert greedy_assignment(*args) == {0: 1, 1: 0}
    assert greedy_assignment(*args, model_order=[0, 1]) == {0: 0, 1: 1}


def test_each_trace_format_runs_its_own_simulators_gavel() -> None:
    sia = run_semantics("sia", Gavel)
    generated = run_semantics(GAVEL_GENERATED, Gavel)
    assert make_policy("gavel", sia.policy_options(Gavel, {})).cfg.mechanism == "sia-artifact"
    assert make_policy("gavel", generated.policy_options(Gavel, {})).cfg.mechanism == "gavel"
    assert sia.policy_options(Gavel, {"mechanism": "gavel"}) == {"mechanism": "gavel"}
    assert sia.policy_options(policy_class("las"), {}) == {}  # LAS has no such option
    with pytest.raises(ValueError, match="mechanism"):
        Gavel(GavelConfig(mechanism="blox"))
