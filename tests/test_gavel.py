"""Gavel: LPs with known optima, the priority mechanism, the throughput file and generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ClusterState, Context, JobSpec, JobStatus, JobView, TaskRequest
from policies.base import Snapshot
from policies.decisions import Place, Preempt
from policies.gavel import Gavel, GavelConfig, greedy_assignment, priority_matrix
from policies.gavel_lp import (
    effective_throughput,
    finish_time_fairness,
    max_min_fairness,
    max_sum_throughput,
    proportional_allocation,
)
from policies.perf_models import PlacementThroughput
from simulator.clusters import NodeGroup, build_nodes
from traces.errors import TraceError
from traces.gavel_throughputs import generate_jobs, read_throughputs

CTX = Context(np.random.default_rng(0))
GAVEL_FILE = Path(__file__).resolve().parents[2] / "shared/data/gavel/simulation_throughputs.json"


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

    assert objective(x) >= objective(equal / max(usage, 1.0)) - 1e-6


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


def test_a_job_with_its_share_yields_to_a_new_one() -> None:
    from policies.jobs import AllocationShape, Placement, TaskPlacement

    state = ClusterState(build_nodes([NodeGroup("fast", 1, 1)]))
    state.allocate(0, (0,), 1000, 0, 0)
    placement = Placement((TaskPlacement("fast-0", (0,), 1000),))
    shape = AllocationShape("fast", 1, 1, gpus_per_node=(1,), gpu_models=("fast",))
    old = JobView(
        gavel_job("old", 1.0, 1.0),
        JobStatus.RUNNING,
        placement,
        shape,
        service_by_model={"fast": 3600.0},
        service_since=3600.0,
    )
    new = JobView(gavel_job("new", 1.0, 1.0), JobStatus.PENDING)
    result = Gavel().schedule(Snapshot(state.view(), [old], [new], 3600.0), CTX)
    kinds = {d.job_id: type(d) for d in result.decisions}
    assert kinds == {"old": Preempt, "new": Place}


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
    if not GAVEL_FILE.is_file():
        pytest.skip(f"missing {GAVEL_FILE}")
    table = read_throughputs(GAVEL_FILE)
    assert len(table.job_types) == 26
    jobs = generate_jobs(table, 2000, 10.0, seed=0)
    scale = np.array([j.replicas for j in jobs])
    assert abs((scale == 1).mean() - 0.7) < 0.05
    multi = [j for j in jobs if j.replicas > 1]
    assert all(table.distributed(str(j.attributes["job_type"])) for j in multi)
    gaps = np.diff([j.submit_time for j in jobs])
    assert abs(gaps.mean() - 360.0) < 30.0
