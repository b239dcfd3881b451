"""The discrete-event engine: timing, heterogeneity, preemption, ordering, invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    Context,
    JobSpec,
    ModelThroughput,
    Place,
    PlacementPolicy,
    Policy,
    SchedulingResult,
    Snapshot,
    TaskRequest,
    make_policy,
)
from simulator.engine import EngineOptions, Simulation
from tests.conftest import job, job_rows, node


def test_single_job_runs_for_its_duration() -> None:
    sim = Simulation([node("n0", 8)], [job("a", submit=10.0, duration=500.0)], make_policy("fifo"))
    row = job_rows(sim.run())["a"]
    assert (row["start_s"], row["end_s"], row["jct_s"]) == (10.0, 510.0, 500.0)
    assert row["status"] == "completed"


def test_job_runs_faster_on_a_faster_gpu_model() -> None:
    work = ModelThroughput(work=1000.0, throughput={"A100": 2.0, "V100": 1.0})
    fast = JobSpec("fast", 0.0, TaskRequest(num_gpus=1, gpu_milli=1000), work)
    slow = JobSpec(
        "slow",
        0.0,
        TaskRequest(num_gpus=1, gpu_milli=1000),
        work,
        allowed_models=frozenset({"V100"}),
    )
    nodes = [node("a", 1, model="A100"), node("v", 1, model="V100")]
    rows = job_rows(Simulation(nodes, [fast, slow], make_policy("fifo")).run())
    assert rows["fast"]["end_s"] == pytest.approx(500.0) and rows["fast"]["gpu_models"] == "A100"
    assert rows["slow"]["end_s"] == pytest.approx(1000.0) and rows["slow"]["gpu_models"] == "V100"


def test_queued_job_starts_when_gpus_free_up() -> None:
    jobs = [job("a", gpus=8, duration=100.0), job("b", gpus=4, submit=1.0, duration=50.0)]
    rows = job_rows(Simulation([node("n0", 8)], jobs, make_policy("fifo")).run())
    b = rows["b"]
    assert (b["start_s"], b["queue_delay_s"], b["end_s"]) == (100.0, 99.0, 150.0)


def test_preemption_requeues_and_charges_the_restart_cost() -> None:
    # LAS: "long" (4 GPUs) passes the 3600 GPU-s threshold at t = 900; "short" arrives at
    # 1000 and preempts it; "long" resumes at 1100 and pays a 30 s restart.
    jobs = [
        job("long", gpus=4, duration=2000.0),
        job("short", gpus=4, submit=1000.0, duration=100.0),
    ]
    sim = Simulation([node("n0", 4)], jobs, make_policy("las"), EngineOptions(restart_cost_s=30.0))
    rows = job_rows(sim.run())
    assert rows["short"]["start_s"] == 1000.0 and rows["short"]["end_s"] == pytest.approx(1100.0)
    # 1000 s done before preemption, 1000 left after a 30 s restart from t = 1100.
    assert rows["long"]["end_s"] == pytest.approx(1100.0 + 30.0 + 1000.0)
    assert rows["long"]["restarts"] == 1


def test_job_restart_cost_from_the_trace_overrides_the_default() -> None:
    jobs = [
        job("long", gpus=4, duration=2000.0, restart_cost_s=5.0),
        job("short", gpus=4, submit=1000.0, duration=100.0),
    ]
    sim = Simulation([node("n0", 4)], jobs, make_policy("las"), EngineOptions(restart_cost_s=30.0))
    assert job_rows(sim.run())["long"]["end_s"] == pytest.approx(1100.0 + 5.0 + 1000.0)


class CountingPolicy(PlacementPolicy):
    """FIFO first-fit that records what each pass saw."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[tuple[float, int]] = []

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        self.passes.append((snapshot.now, len(snapshot.pending)))
        return super().schedule(snapshot, ctx)

    def score(self, spec, task, state, candidates, ctx):
        return -candidates.astype(float)


CountingPolicy.name = "test-counting"  # after the body: kept out of the global registry


def test_same_time_events_share_one_pass_that_sees_them_all() -> None:
    jobs = [job(f"j{i}", submit=5.0, duration=10.0) for i in range(4)]
    jobs += [job(f"k{i}", submit=15.0, duration=10.0) for i in range(3)]
    policy = CountingPolicy()
    Simulation([node("n0", 8)], jobs, policy).run()
    # one pass at t = 5 with all four arrivals; at t = 15 the four completions and three
    # arrivals happen together, again in a single pass.
    assert policy.passes == [(5.0, 4), (15.0, 3)]


def test_jobs_that_cannot_fit_the_empty_cluster_are_rejected() -> None:
    jobs = [job("huge", gpus=16), job("ok")]
    rows = job_rows(Simulation([node("n0", 8)], jobs, make_policy("fifo")).run())
    assert rows["huge"]["status"] == "rejected" and rows["ok"]["status"] == "completed"


def test_horizon_reports_unfinished_jobs() -> None:
    jobs = [job("a", duration=1000.0)]
    sim = Simulation([node("n0", 8)], jobs, make_policy("fifo"), EngineOptions(horizon_s=100.0))
    assert job_rows(sim.run())["a"]["status"] == "unfinished"


def test_gpu_utilisation_integrates_allocated_gpu_time() -> None:
    # 4 of 8 GPUs for 100 s then 8 of 8 for 100 s → 75% over the 200 s makespan.
    jobs = [job("a", gpus=4, duration=200.0), job("b", gpus=4, submit=100.0, duration=100.0)]
    summary = Simulation([node("n0", 8)], jobs, make_policy("fifo")).run().summary()
    assert summary["gpu_util"] == pytest.approx(0.75)
    assert summary["makespan_s"] == 200.0


def erlang_c_wait(arrival: float, service: float, servers: int) -> float:
    """Mean wait in an M/M/c queue (Erlang C)."""
    load = arrival / service
    rho = load / servers
    head = sum(load**k / math.factorial(k) for k in range(servers))
    tail = load**servers / (math.factorial(servers) * (1 - rho))
    return tail / (head + tail) / (servers * service - arrival)


def test_fifo_single_gpu_jobs_match_the_mm_c_mean_wait() -> None:
    rng = np.random.default_rng(7)
    servers, arrival, service, n = 4, 3.0, 1.0, 40_000
    submits = np.cumsum(rng.exponential(1 / arrival, n))
    durations = rng.exponential(1 / service, n)
    jobs = [
        job(f"j{i}", submit=float(t), duration=float(d))
        for i, (t, d) in enumerate(zip(submits, durations, strict=True))
    ]
    summary = Simulation([node("n0", servers)], jobs, make_policy("fifo")).run().summary()
    expected = erlang_c_wait(arrival, service, servers)
    assert summary["avg_queue_delay_s"] == pytest.approx(expected, rel=0.1)


class CapacityGuard(Policy):
    """Wraps a policy and checks the host's cluster invariants at every pass."""

    def __init__(self, inner: Policy) -> None:
        super().__init__()
        self.inner = inner
        self.round_s = inner.round_s

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        state = snapshot.cluster
        assert (state.gpu_free >= 0).all() and (state.gpu_free <= 1000).all()
        assert (state.cpu_free >= 0).all() and (state.cpu_free <= state.cpu_cap).all()
        assert (state.mem_free >= 0).all() and (state.mem_free <= state.mem_cap).all()
        return self.inner.schedule(snapshot, ctx)


CapacityGuard.name = "test-capacity-guard"  # after the body: not registered


job_shapes = st.tuples(
    st.floats(0, 500),  # submit
    st.sampled_from([(0, 0), (1, 250), (1, 500), (1, 1000), (2, 1000), (4, 1000), (8, 1000)]),
    st.integers(1, 2),  # replicas
    st.floats(1, 300),  # duration
    st.integers(0, 40_000),  # cpu
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(job_shapes, min_size=1, max_size=30),
    policy=st.sampled_from(
        ["fifo", "bestfit", "packing", "clustering", "dotprod", "random", "las"]
    ),
    seed=st.integers(0, 3),
)
def test_capacity_holds_and_every_fitting_job_completes(shapes, policy, seed) -> None:
    jobs = [
        job(f"j{i}", gpus=g, milli=m, replicas=r, submit=s, duration=d, cpu=c)
        for i, (s, (g, m), r, d, c) in enumerate(shapes)
    ]
    nodes = [node("a", 4), node("b", 8, model="T4"), node("c", 2)]
    guard = CapacityGuard(make_policy(policy))
    recorder = Simulation(nodes, jobs, guard, EngineOptions(seed=seed)).run()
    status = {job_id: row["status"] for job_id, row in job_rows(recorder).items()}
    assert len(status) == len(jobs)
    for spec in jobs:
        fits = spec.task.cpu_milli <= 64_000 and (spec.replicas * spec.task.num_gpus <= 14)
        fits = fits and spec.task.num_gpus * spec.replicas <= 14
        if status[spec.id] == "rejected":
            continue
        assert status[spec.id] == "completed", (spec, status[spec.id])
        assert fits


def test_same_seed_gives_the_same_schedule() -> None:
    jobs = [
        job(f"j{i}", submit=i * 3.0, duration=50.0 + i, milli=500 if i % 3 else 1000)
        for i in range(60)
    ]

    def schedule(seed: int) -> list[tuple]:
        return (
            Simulation(
                [node("a", 2), node("b", 2)], jobs, make_policy("random"), EngineOptions(seed=seed)
            )
            .run()
            .jobs
        )

    assert schedule(1) == schedule(1)
    assert schedule(1) != schedule(2)


def test_round_policy_runs_on_its_timer() -> None:
    class EveryMinute(Policy):
        round_s = 60.0

        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
            self.times.append(snapshot.now)
            inner = make_policy("fifo").schedule(snapshot, ctx)
            return SchedulingResult(tuple(d for d in inner.decisions if isinstance(d, Place)))

    EveryMinute.name = "test-every-minute"  # after the body: not registered
    policy = EveryMinute()
    rows = job_rows(
        Simulation([node("n0", 8)], [job("a", submit=10.0, duration=100.0)], policy).run()
    )
    assert rows["a"]["start_s"] == 60.0  # waits for the round
    assert policy.times[:3] == [0.0, 60.0, 120.0]


class WakeOnce(Policy):
    """Asks once to be woken at `wake_at` and notes when it is asked."""

    def __init__(self, wake_at: float) -> None:
        super().__init__()
        self.wake_at = wake_at
        self.times: list[float] = []

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        self.times.append(snapshot.now)
        return SchedulingResult(wake_at=None if self.times[1:] else self.wake_at)


WakeOnce.name = "test-wake-once"  # after the body: not registered


@pytest.mark.parametrize("wake_at", [100_000.0, 130_006.24152648325])
def test_a_policy_is_woken_when_it_asks(wake_at: float) -> None:
    # From 47224.0478223686 simpy reaches 130006.24152648325 one ulp early (it adds the
    # delay to the clock): the policy must be asked there all the same.
    policy = WakeOnce(wake_at)
    Simulation([node("n0", 8)], [job("a", submit=47224.0478223686)], policy).run()
    assert policy.times == [47224.0478223686, pytest.approx(wake_at, rel=1e-15)]
