"""Each baseline's choice on a small cluster worked by hand (rules in reference fgd.md §5)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from policies import (
    ClusterState,
    Context,
    JobStatus,
    JobView,
    Place,
    Snapshot,
    Taint,
    Toleration,
    Unschedulable,
    make_policy,
)
from policies.cluster import NodeSpec
from tests.conftest import job, node


def run_pass(policy_name: str, state: ClusterState, *specs, seed: int = 0, **options):
    pending = [JobView(spec=s, status=JobStatus.PENDING) for s in specs]
    snapshot = Snapshot(cluster=state.view(), running=[], pending=pending, now=0.0)
    policy = make_policy(policy_name, options)
    return policy.schedule(snapshot, Context(np.random.default_rng(seed))).decisions


def placed(decisions) -> list[tuple[str, tuple[int, ...]]]:
    return [(t.node, t.gpus) for d in decisions if isinstance(d, Place) for t in d.placement.tasks]


@pytest.fixture
def cluster() -> ClusterState:
    """n0: 4 idle GPUs, 64 cores free. n1: GPUs 0-1 busy, 16 cores free. n2: 2 idle T4."""
    state = ClusterState([node("n0", 4), node("n1", 4), node("n2", 2, model="T4")])
    state.allocate(1, (0, 1), 1000, 48_000, 0)
    return state


def test_fifo_takes_the_first_node_that_fits(cluster: ClusterState) -> None:
    assert placed(run_pass("fifo", cluster, job("a", gpus=3))) == [("n0", (0, 1, 2))]


def test_fifo_blocks_behind_a_job_that_does_not_fit(cluster: ClusterState) -> None:
    decisions = run_pass("fifo", cluster, job("big", gpus=8), job("small", gpus=1))
    assert [type(d) for d in decisions] == [Unschedulable]
    decisions = run_pass("fifo", cluster, job("big", gpus=8), job("small", gpus=1), blocking=False)
    assert placed(decisions) == [("n0", (0,))]


def test_bestfit_prefers_least_weighted_leftover(cluster: ClusterState) -> None:
    # n0: 0.5·56000/128000 + 0.5·3000/8000 = 0.40625 → score 59
    # n1: 0.5·8000/128000 + 0.5·1000/8000 = 0.09375 → score 90 (wins)
    # n2: 0.5·56000/128000 + 0.5·1000/8000 = 0.28125 → score 71
    assert placed(run_pass("bestfit", cluster, job("a", cpu=8000))) == [("n1", (2,))]


def test_dotprod_prefers_smallest_residual_demand_product(cluster: ClusterState) -> None:
    # n0: [0.5, 0.5]·[0.0625, 0.125] = 0.09375 → 95; n1: [0.125, 0.25]· = 0.039 → 98
    assert placed(run_pass("dotprod", cluster, job("a", cpu=8000))) == [("n1", (2,))]


def test_integer_scores_tie_and_the_first_name_wins() -> None:
    state = ClusterState([node("b", 4), node("a", 4)])
    # Identical nodes score the same; index 0 ("b" as given) wins the tie.
    assert placed(run_pass("bestfit", state, job("x")))[0][0] == "b"


def test_packing_tiers(cluster: ClusterState) -> None:
    cluster.allocate(0, (0,), 700, 0, 0)  # n0: GPU0 has 300 free
    cluster.allocate(1, (2,), 400, 0, 0)  # n1: GPU2 has 600 free
    # n0: 500m fits no partial GPU → fresh GPU on a used node: 50 − 1 = 49
    # n1: fits GPU2 (600 free): 100 − (60 // 10) = 94 (wins)
    # n2: all GPUs free: max(33 − 2, 2) = 31
    assert placed(run_pass("packing", cluster, job("s", milli=500))) == [("n1", (2,))]


def test_packing_puts_whole_gpu_task_on_used_node_before_idle_node() -> None:
    state = ClusterState([node("idle", 4), node("used", 4)])
    state.allocate(1, (0,), 1000, 0, 0)
    assert placed(run_pass("packing", state, job("w", gpus=2))) == [("used", (1, 2))]


def test_clustering_co_locates_the_same_gpu_class(cluster: ClusterState) -> None:
    cluster.allocate(0, (3,), 500, 0, 0)  # n0 hosts a sharing pod: band 75
    # n1 hosts only a 2-GPU pod (other class): band 0; n2 hosts nothing: band 25
    assert placed(run_pass("clustering", cluster, job("s", milli=250))) == [("n0", (3,))]
    # A 2-GPU task goes to n1, which hosts exactly that class.
    assert placed(run_pass("clustering", cluster, job("w", gpus=2))) == [("n1", (2, 3))]


def test_random_fit_draws_every_feasible_node_and_only_those(cluster: ClusterState) -> None:
    counts = Counter(
        placed(run_pass("random", cluster, job("a", gpus=3), seed=s))[0][0] for s in range(200)
    )
    assert set(counts) == {"n0"}  # only n0 has 3 free GPUs
    counts = Counter(
        placed(run_pass("random", cluster, job("a"), seed=s))[0][0] for s in range(300)
    )
    assert set(counts) == {"n0", "n1", "n2"}
    assert min(counts.values()) > 50


def test_sharing_task_takes_the_tightest_gpu_that_fits(cluster: ClusterState) -> None:
    cluster.allocate(0, (1,), 600, 0, 0)
    cluster.allocate(0, (2,), 300, 0, 0)
    assert placed(run_pass("fifo", cluster, job("s", milli=400))) == [("n0", (1,))]


def test_gang_is_all_or_nothing(cluster: ClusterState) -> None:
    # Three 2-GPU tasks fit (n0 twice, n1 once)...
    assert len(placed(run_pass("fifo", cluster, job("g", gpus=2, replicas=3)))) == 3
    # ...four do not (n2's T4s are excluded), and then nothing is placed.
    decisions = run_pass(
        "fifo", cluster, job("g", gpus=2, replicas=4, allowed_models=frozenset({"V100"}))
    )
    assert placed(decisions) == []
    assert isinstance(decisions[0], Unschedulable)


def test_allowed_models_restrict_nodes(cluster: ClusterState) -> None:
    spec = job("t4", allowed_models=frozenset({"T4"}))
    assert placed(run_pass("bestfit", cluster, spec)) == [("n2", (0,))]


def test_taints_and_node_selectors() -> None:
    state = ClusterState(
        [
            NodeSpec("a", 8000, 8000, 1, "T4", taints=(Taint("dedicated", "infer"),)),
            NodeSpec("b", 8000, 8000, 1, "T4", labels={"zone": "x"}),
            NodeSpec("c", 8000, 8000, 1, "T4", labels={"zone": "y"}),
        ]
    )
    assert placed(run_pass("fifo", state, job("plain")))[0][0] == "b"
    tolerant = job("tol", tolerations=(Toleration("dedicated", "infer"),))
    assert placed(run_pass("fifo", state, tolerant))[0][0] == "a"
    picky = job("sel", node_selector={"zone": "y"})
    assert placed(run_pass("fifo", state, picky))[0][0] == "c"


def test_cpu_only_task_lands_anywhere_with_cpu(cluster: ClusterState) -> None:
    spec = job("cpu", gpus=0, cpu=20_000)
    assert placed(run_pass("packing", cluster, spec)) == [("n0", ())]


def test_several_jobs_in_one_pass_see_each_other(two_nodes: ClusterState) -> None:
    decisions = run_pass("fifo", two_nodes, job("a", gpus=4), job("b", gpus=4), job("c"))
    assert placed(decisions) == [("n0", (0, 1, 2, 3)), ("n1", (0, 1, 2, 3))]
    assert isinstance(decisions[-1], Unschedulable)
