"""The packing baselines against the FGD artifact's rules (hkust-adsl/
kubernetes-scheduler-simulator, pkg/simulator/plugin/*_score.go and open_gpu_share.go),
worked by hand: integer truncation that creates ties for the first node name, each
policy's GPU choice, and CPU-only tasks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from policies import ClusterState, Context, JobStatus, JobView, Place, Snapshot, make_policy
from tests.conftest import job, node

BASELINES = ("bestfit", "dotprod", "packing", "clustering", "random")


def placed(policy: str, state: ClusterState, spec, seed: int = 0) -> tuple[str, tuple[int, ...]]:
    pending = [JobView(spec, JobStatus.PENDING)]
    snapshot = Snapshot(state.view(), [], pending, 0.0)
    result = make_policy(policy).schedule(snapshot, Context(np.random.default_rng(seed)))
    (decision,) = result.decisions
    assert isinstance(decision, Place)
    (task,) = decision.placement.tasks
    return task.node, task.gpus


def test_bestfit_truncation_ties_go_to_the_first_name() -> None:
    # 1 GPU, 1 core: a leaves 0.5·63000/128000 + 0.5·3000/8000 = 0.43359 → int(56.64) = 56;
    # b leaves 0.5·62500/128000 + 0.1875 = 0.43164 → int(56.84) = 56: a tie, so a wins
    # although b is the tighter fit.
    state = ClusterState([node("a", 4, cpu=64_000), node("b", 4, cpu=63_500)])
    assert placed("bestfit", state, job("t", cpu=1000)) == ("a", (0,))


def test_dotprod_truncation_ties_go_to_the_first_name() -> None:
    # Task [8000/128000, 1000/8000] = [0.0625, 0.125].
    # a: [0.5, 0.5] → dot 0.09375 → int(100·(1 − 0.046875)) = int(95.31) = 95
    # b: [0.46875, 0.5] → dot 0.09180 → int(95.41) = 95: tie, a wins.
    state = ClusterState([node("a", 4, cpu=64_000), node("b", 4, cpu=60_000)])
    assert placed("dotprod", state, job("t", cpu=8000)) == ("a", (0,))


def test_packing_shared_gpu_score_truncates_per_ten_percent() -> None:
    # Case 1 (fits a partly used GPU): 100 − (free·100/1000)/10, integer division.
    # a's partial GPU has 690 free: 100 − 69/10 = 94; b's has 650 free: 100 − 65/10 = 94.
    state = ClusterState([node("a", 2), node("b", 2)])
    state.allocate(0, (1,), 310, 0, 0)
    state.allocate(1, (1,), 350, 0, 0)
    assert placed("packing", state, job("s", milli=600)) == ("a", (1,))


def test_packing_idle_node_score_uses_max_not_min() -> None:
    # Case 3 (every GPU free) scores max(33 − n, n): 25 for 8 GPUs, 31 for 2 GPUs, so a
    # whole-GPU task goes to the small idle node even though the big one comes first.
    state = ClusterState([node("big", 8), node("small", 2)])
    assert placed("packing", state, job("w")) == ("small", (0,))


def test_clustering_fullness_term_is_integer_division() -> None:
    # Bands plus 25·(8000 − idle)/8000 (Go integer division):
    # a hosts a 1-GPU pod only (other class): 0 + 25·1000/8000 = 3
    # b is idle with 4 GPUs: 25 + 25·4000/8000 = 37;  c idle with 2 GPUs: 25 + 18 = 43.
    state = ClusterState([node("a", 8), node("b", 4), node("c", 2)])
    state.allocate(0, (0,), 1000, 0, 0)
    assert placed("clustering", state, job("s", milli=300)) == ("c", (0,))


@pytest.mark.parametrize("policy", ["packing", "clustering"])
def test_cpu_only_tasks_score_zero_and_go_to_the_first_feasible_node(policy: str) -> None:
    state = ClusterState([node("a", 2, cpu=4000), node("b", 8, cpu=96_000), node("c", 2)])
    assert placed(policy, state, job("c", gpus=0, cpu=8000)) == ("b", ())


def test_cpu_only_tasks_under_bestfit_and_dotprod_use_the_cpu_dimension() -> None:
    # Best-fit: least CPU left wins (c, 56 cores free vs b's 88); dot product: the least
    # CPU-aligned residual wins (again c).
    state = ClusterState([node("a", 2, cpu=4000), node("b", 8, cpu=96_000), node("c", 2)])
    assert placed("bestfit", state, job("c", gpus=0, cpu=8000)) == ("c", ())
    assert placed("dotprod", state, job("c", gpus=0, cpu=8000)) == ("c", ())


@pytest.mark.parametrize("policy", BASELINES)
def test_whole_gpu_tasks_take_the_lowest_index_fully_free_gpus(policy: str) -> None:
    state = ClusterState([node("a", 4)])
    state.allocate(0, (1,), 500, 0, 0)
    assert placed(policy, state, job("w", gpus=2)) == ("a", (0, 2))


@pytest.mark.parametrize("policy", ["bestfit", "dotprod", "packing", "clustering"])
def test_sharing_tasks_take_the_tightest_gpu(policy: str) -> None:
    # gpusel=best: least free GPU that fits, lowest index on ties.
    state = ClusterState([node("a", 4)])
    state.allocate(0, (0,), 800, 0, 0)  # 200 free: too little
    state.allocate(0, (1,), 400, 0, 0)  # 600 free
    state.allocate(0, (3,), 400, 0, 0)  # 600 free
    assert placed(policy, state, job("s", milli=300)) == ("a", (1,))


def test_random_fit_picks_any_gpu_that_fits_for_a_sharing_task() -> None:
    # gpusel=random: uniform over GPUs with room (here 1, 2 and 3, never 0).
    state = ClusterState([node("a", 4)])
    state.allocate(0, (0,), 800, 0, 0)
    state.allocate(0, (1,), 400, 0, 0)
    gpus = Counter(placed("random", state, job("s", milli=300), seed=s)[1] for s in range(300))
    assert set(gpus) == {(1,), (2,), (3,)}
    assert min(gpus.values()) > 60
