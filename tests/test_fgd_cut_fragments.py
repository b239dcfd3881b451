"""FGD's second tie rule, the fragments of the task types M's coverage cut leaves out
(policies.cut_fragments), worked by hand: a rare type that only one node can host keeps
that node, where the CPU-starvation rule alone gives it away."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from policies import ClusterState, TaskRequest
from policies.cut_fragments import CutFragments
from policies.fragmentation import WorkloadArrays, host_scarcity_weights
from policies.target_workload import TargetWorkload, TaskType, workload_from_counts
from tests.conftest import job, node
from tests.test_fgd import place

SMALL = TaskType(TaskRequest(12_000, 0, 1, 1000), None, 1.0)
"""M's only type: 1 GPU, 12 cores, so ρ = 12 CPU milli per milli-GPU."""
WHOLE_NODE = TaskType(TaskRequest(120_000, 0, 8, 1000), None, 0.05)
"""Cut from M: 8 GPUs and 120 cores, 5% of all tasks; only a 128-core node hosts it."""


def test_host_scarcity_weights_worked_by_hand() -> None:
    """18 GPUs: `lean` 8 GPUs and 96 cores, `rich` 8 and 128, `t4` 2 T4s and 16 cores.
    The 120-core 8-GPU type fits only `rich`: 18/8. A 2-GPU 20-core type fits `lean`
    and `rich`: 18/16. A T4-only type fits `t4`: 18/2. 1-GPU 8-core: every node, 1.
    CPU-only: 1, whatever its CPU."""
    state = ClusterState(
        [node("lean", 8, cpu=96_000), node("rich", 8, cpu=128_000), node("t4", 2, "T4", 16_000)]
    )
    types = (
        WHOLE_NODE,
        TaskType(TaskRequest(20_000, 0, 2, 1000), None, 0.1),
        TaskType(TaskRequest(4000, 0, 1, 1000), frozenset({"T4"}), 0.1),
        TaskType(TaskRequest(8000, 0, 1, 1000), None, 0.1),
        TaskType(TaskRequest(100_000), None, 0.1),
    )
    arrays = WorkloadArrays.of_types(types, state.gpu_models)
    weights = host_scarcity_weights(arrays, state)
    np.testing.assert_allclose(weights, [18 / 8, 18 / 16, 18 / 2, 1, 1])


def test_a_workload_from_counts_keeps_the_types_its_cut_leaves_out() -> None:
    """95 small tasks and 5 whole-node ones: M (95% of tasks) is the small type alone,
    renormalised to 1; the whole-node type is cut, with its share of all tasks."""
    counts = Counter({(12_000, 1000, 1, None): 95, (120_000, 1000, 8, None): 5})
    workload = workload_from_counts(counts)
    assert workload.types == (SMALL,)
    assert workload.cut == (WHOLE_NODE,)


def test_a_rare_whole_node_type_keeps_the_only_node_that_hosts_it() -> None:
    """Empty nodes `lean` (8 GPUs, 96 cores) and `rich` (8 GPUs, 128 cores); a 1-GPU
    task asking 16 cores. M = {1 GPU, 12 cores}: it fits either node before and after,
    so Δ = 0 and the score is 50 on both.

    Starved GPU at ρ = 12: `lean` feeds 96/12 = 8 GPUs (S = 0); after, 80/12 = 6.67 of
    7 idle: S = 333.3. `rich` feeds all it has before and after: S = 0. The CPU-starvation
    rule alone sends the task to `rich`.

    The cut type (8 GPUs, 120 cores, 5% of tasks) fits only `rich`: host scarcity 16/8 =
    2. On `rich` its fragment goes from 0 (it fits) to all 7000 idle milli-GPU: ΔF =
    0.05·2·7000 = 700. On `lean` it never fits, so its fragment is all idle GPU, 8000 →
    7000: ΔF = 0.05·2·(−1000) = −100. Sums: `lean` 333.3 − 100 = 233.3, `rich` 700:
    the task goes to `lean`."""
    state = ClusterState([node("lean", 8, cpu=96_000), node("rich", 8, cpu=128_000)])
    task = job("x", cpu=16_000)
    cut = CutFragments(shapes=8)
    cut.use(TargetWorkload((SMALL,), (WHOLE_NODE,)))
    assert cut.share == pytest.approx(0.05)
    np.testing.assert_allclose(cut.change(task.task, state, np.arange(2)), [-100, 700])
    assert place(state, task, workload=TargetWorkload((SMALL,)))[0] == "rich"
    assert place(state, task, workload=TargetWorkload((SMALL,), (WHOLE_NODE,)))[0] == "lean"


def test_without_cut_types_the_rule_is_off() -> None:
    cut = CutFragments(shapes=8)
    cut.use(TargetWorkload((SMALL,)))
    assert cut.share == 0


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_cut_shares_outside_0_to_1_are_refused(share: float) -> None:
    with pytest.raises(ValueError, match="cut task type shares"):
        TargetWorkload((SMALL,), (replace(WHOLE_NODE, probability=share),))
