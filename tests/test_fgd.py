"""FGD's choices on small clusters worked by hand, its properties, and where its target
workload comes from (config, a trace replay's job list, or the snapshot)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.cli import main
from policies import (
    ClusterState,
    Context,
    JobSpec,
    JobStatus,
    JobView,
    Place,
    Snapshot,
    TaskRequest,
    make_policy,
)
from policies.fgd import MODES, Fgd, FgdConfig, artifact_scores, tie_ranks
from policies.fragmentation import (
    NodeFragmentation,
    WorkloadArrays,
    node_fragmentation,
    scarcity_weights,
)
from policies.target_workload import TargetWorkload, TaskType, workload_from_jobs
from simulator.engine import Simulation
from tests.conftest import job, node
from traces.openb import read_jobs, read_nodes

SHARE_500 = TaskType(TaskRequest(1000, 0, 1, 500), None, 0.5)
WHOLE_1 = TaskType(TaskRequest(1000, 0, 1, 1000), None, 0.5)
WHOLE_2 = TaskType(TaskRequest(1000, 0, 2, 1000), None, 0.5)


def gpu_cluster(free_rows: list[list[int]]) -> ClusterState:
    state = ClusterState([node(f"n{i}", len(row)) for i, row in enumerate(free_rows)])
    for index, row in enumerate(free_rows):
        for gpu, free in enumerate(row):
            if free < 1000:
                state.allocate(index, (gpu,), 1000 - free, 0, 0)
    return state


def place(state: ClusterState, spec: JobSpec, seed: int = 0, **options) -> tuple[str, tuple]:
    policy = make_policy("fgd", options)
    pending = [JobView(spec, JobStatus.PENDING)]
    result = policy.schedule(
        Snapshot(state.view(), [], pending, 0.0), Context(np.random.default_rng(seed))
    )
    (decision,) = result.decisions
    assert isinstance(decision, Place)
    (task,) = decision.placement.tasks
    return task.node, task.gpus


def test_sharing_task_worked_by_hand() -> None:
    """M = {share 500, whole 1000} at ½ each; a 400m task on three 2-GPU nodes.

    F(share 500) counts GPUs below 500; F(whole) counts GPUs below 1000, or all idle
    if no GPU is fully free. Δ per (node, GPU):
      n0 [1000,1000]: either GPU → [600,1000]: 0 → ½·600 = 300          Δ = +300
      n1 [600,1000]:  before ½·600 = 300; GPU0 → [200,1000]: ½·200+½·200 = 200   Δ = −100
                      GPU1 → [600,600]: ½·0 + ½·1200 = 600                Δ = +300
      n2 [500,1000]:  before ½·500 = 250; GPU0 → [100,1000]: 100        Δ = −150
                      GPU1 → [500,600]: ½·1100 = 550                      Δ = +300
    Least Δ: n2, GPU 0. Artifact scores: int(100σ(0.15)) = 53 beats n1's 52 and n0's 42.
    """
    workload = TargetWorkload((SHARE_500, WHOLE_1))
    state = gpu_cluster([[1000, 1000], [600, 1000], [500, 1000]])
    task = job("s", milli=400, cpu=1000)
    cache = NodeFragmentation(workload)
    cache.sync(state)
    deltas = cache.placement_deltas(state, task.task, np.arange(3))
    np.testing.assert_allclose(deltas[:, :2], [[300, 300], [-100, 300], [-150, 300]])
    assert artifact_scores(deltas[:, :2]).tolist() == [[42, 42], [52, 42], [53, 42]]
    for mode in ("score", "artifact", "exact"):
        assert place(state, task, workload=workload, mode=mode) == ("n2", (0,))
    assert place(state, task, workload=workload, mode="exact", tolerance_milli=0) == ("n2", (0,))


def test_a_sharing_task_keeps_off_a_node_that_cannot_share_where_it_would_waste_a_gpu() -> None:
    """Node `whole` cannot share its GPUs (`NodeSpec.shares_gpus`), node `shared` can;
    one idle GPU each; a 500m task. On `whole` it takes the GPU, and the other 500m are
    lost to every type.

    M = {share 500, whole 1000} at ½ each:
      shared → [500]: share 500 still fits, the whole type sees 500 it cannot use  Δ = 250
      whole → [0]: no idle GPU, no fragment; the lost 500 for both types          Δ = 500
    Counted as if `whole` shared, it would tie at 250 and win every tie (first by name
    and by the hashed order). FGD takes `shared` in every mode.
    M = {whole 1000}: `shared` leaves a 500 fragment, `whole` loses 500: Δ = 500 on both.
    """
    nodes = [replace(node("whole", 1), shares_gpus=False), node("shared", 1)]
    assert tie_ranks([n.name for n in nodes]).tolist() == [0, 1]
    task = job("s", milli=500, cpu=1000)
    mixed = TargetWorkload((SHARE_500, WHOLE_1))
    only_whole = TargetWorkload((replace(WHOLE_1, probability=1.0),))
    for workload, expected in ((mixed, [500, 250]), (only_whole, [500, 500])):
        state = ClusterState(nodes)
        cache = NodeFragmentation(workload)
        cache.sync(state)
        deltas = cache.placement_deltas(state, task.task, np.arange(2))
        assert deltas[:, 0] == pytest.approx(expected)
    for mode in MODES:
        assert place(ClusterState(nodes), task, workload=mixed, mode=mode)[0] == "shared"


def test_multi_gpu_task_worked_by_hand() -> None:
    """M = {2 × 1000, share 500} at ½ each; a 2-GPU task on three 4-GPU nodes.

      n0 idle:               → [0,0,1000,1000]: both types still run, no fragment  Δ = 0
      n1 [1000,1000,1000,0]: → one free GPU left: 2-GPU type sees 1000 idle        Δ = +500
      n2 [1000,1000,300,1000]: before ½·300 + ½·300 = 300; after taking GPUs 0, 1 the
                             2-GPU type sees all 1300 idle: ½·1300 + ½·300 = 800   Δ = +500
    FGD keeps the partly used nodes' free GPU pairs for later 2-GPU tasks: n0, GPUs 0-1,
    where the packing baselines would fill n1 or n2.
    """
    workload = TargetWorkload((WHOLE_2, SHARE_500))
    state = gpu_cluster([[1000] * 4, [1000, 1000, 1000, 0], [1000, 1000, 300, 1000]])
    task = job("w", gpus=2, cpu=1000)
    cache = NodeFragmentation(workload)
    cache.sync(state)
    deltas = cache.placement_deltas(state, task.task, np.arange(3))
    assert deltas[:, 0] == pytest.approx([0, 500, 500])
    for mode in ("score", "artifact", "exact"):
        assert place(state, task, workload=workload, mode=mode) == ("n0", (0, 1))
    packing = make_policy("packing")
    pending = [JobView(task, JobStatus.PENDING)]
    (decision,) = packing.schedule(
        Snapshot(state.view(), [], pending, 0.0), Context(np.random.default_rng(0))
    ).decisions
    assert isinstance(decision, Place) and decision.placement.tasks[0].node != "n0"


def test_artifact_score_quantises_and_ties_go_to_the_first_name() -> None:
    """M = {share 500 at ¼, whole 1000 at ¾}; a 40m sharing task.

      n0 [1000,600]: GPU1 → 560: the whole type's fragment shrinks by 40   Δ = −¾·40 = −30
      n1 [1000,40]:  GPU1 → 0: both types' fragment shrinks by 40          Δ = −40
      GPU0 on either node leaves no fully free GPU: the whole type then sees all
      idle GPU (+960 · ¾)                                                   Δ = +720
    Scores int(100σ(−Δ/1000)): 50, 50 and 32, so the artifact takes the first name (n0);
    the default takes the tied node that comes first in its hashed-name order, and
    exact Δ takes n1 with or without its tolerance (with it, by packing: less idle GPU).
    """
    assert artifact_scores(np.array([[0.0, 1.0, -1000.0, np.inf]])).tolist() == [[50, 49, 73, -1]]
    workload = TargetWorkload(
        (TaskType(SHARE_500.task, None, 0.25), TaskType(WHOLE_1.task, None, 0.75))
    )
    state = gpu_cluster([[1000, 600], [1000, 40]])
    task = job("s", milli=40, cpu=1000)
    cache = NodeFragmentation(workload)
    cache.sync(state)
    deltas = cache.placement_deltas(state, task.task, np.arange(2))
    np.testing.assert_allclose(deltas, [[720, -30], [720, -40]])
    assert artifact_scores(deltas).tolist() == [[32, 50], [32, 50]]
    assert place(state, task, workload=workload, mode="artifact") == ("n0", (1,))
    first = ("n0", "n1")[int(tie_ranks(["n0", "n1"]).argmin())]
    assert place(state, task, workload=workload) == (first, (1,))
    state_renamed = gpu_cluster([[1000, 600], [1000, 40]])
    assert place(state_renamed, task, workload=workload) == (first, (1,))
    assert place(state, task, workload=workload, mode="exact", tolerance_milli=0) == ("n1", (1,))
    assert place(state, task, workload=workload, mode="exact") == ("n1", (1,))


def test_default_weighs_a_scarce_models_fragments_by_its_scarcity() -> None:
    """M = {any 1-GPU whole task at 0.98, T4-only 1-GPU whole task at 0.02}; cluster
    a-t4 (2 T4) and b-g2 (6 G2): 8 GPUs, 2 of them usable by the T4 type.

    An unconstrained 1-GPU task:
      a-t4 [1000,1000] → [0,1000]: both types still run, no fragment          Δ = 0
      b-g2 6 idle → 5 idle: the T4 type cannot use G2, so all its idle GPU is
      fragmented for it (NO_ACCESS): 6000 → 5000                   Δ = −0.02·1000 = −20
    The paper's scores: int(100σ(0)) = 50 and int(100σ(0.02)) = int(50.5) = 50, a tie
    the artifact gives to the first name, so the T4-only type's GPU goes to a task that
    could run anywhere. The default weighs the T4 type by 8 GPUs ÷ 2 usable = 4:
    Δ(b-g2) = −80, score int(100σ(0.08)) = int(51.999) = 51 > 50: b-g2 on every seed.
    """
    anywhere = TaskType(TaskRequest(1000, 0, 1, 1000), None, 0.98)
    t4_only = TaskType(TaskRequest(1000, 0, 1, 1000), frozenset({"T4"}), 0.02)
    workload = TargetWorkload((anywhere, t4_only))
    state = ClusterState([node("a-t4", 2, "T4"), node("b-g2", 6, "G2")])
    task = job("w", cpu=1000)
    paper = NodeFragmentation(workload)
    paper.sync(state)
    assert paper.placement_deltas(state, task.task, np.arange(2))[:, 0] == pytest.approx([0, -20])
    weighted = NodeFragmentation(workload, scarcity=True)
    weighted.sync(state)
    np.testing.assert_allclose(weighted.delta_weights, [0.98, 0.02 * 4])
    assert weighted.placement_deltas(state, task.task, np.arange(2))[:, 0] == pytest.approx(
        [0, -80]
    )
    assert weighted.cluster_amount() == pytest.approx(paper.cluster_amount())  # the measure
    assert place(state, task, workload=workload, mode="artifact") == ("a-t4", (0,))
    assert {place(state, task, seed, workload=workload)[0] for seed in range(10)} == {"b-g2"}


def test_scarcity_weights_worked_by_hand() -> None:
    """GPUs: 8 V100 + 4 T4 + 4 A100 = 16. A type that may use any model, a CPU-only
    type and a type allowed every model present weigh 1; T4-only 16/4 = 4; V100 or T4
    16/12; a type asking for a model the cluster lacks has no usable GPU and keeps 1."""
    state = ClusterState([node("v", 8, "V100"), node("t", 4, "T4"), node("a", 4, "A100")])
    whole = TaskRequest(1000, 0, 1, 1000)
    types = (
        TaskType(whole, None, 0.2),
        TaskType(TaskRequest(4000), None, 0.2),
        TaskType(whole, frozenset({"V100", "T4", "A100"}), 0.1),
        TaskType(whole, frozenset({"T4"}), 0.2),
        TaskType(whole, frozenset({"V100", "T4"}), 0.2),
        TaskType(whole, frozenset({"H100"}), 0.1),
    )
    arrays = WorkloadArrays(TargetWorkload(types), state.gpu_models)
    np.testing.assert_allclose(scarcity_weights(arrays, state), [1, 1, 1, 4, 16 / 12, 1])


def test_tie_order_is_a_fixed_hash_unrelated_to_name_order() -> None:
    """Tied tasks keep landing on the same node (a fixed order, so they pack), but which
    node does not follow the names: node lists are named by rack and model (openb's is
    sorted by model), and name order put every tied task on the small P100 nodes."""
    names = [f"openb-node-{i:04d}" for i in range(1213)]
    ranks = tie_ranks(names)
    assert sorted(ranks.tolist()) == list(range(1213))
    np.testing.assert_array_equal(ranks, tie_ranks(names))
    assert abs(np.corrcoef(ranks, np.arange(1213))[0, 1]) < 0.1
    first_tenth = ranks < 121
    assert 0.05 < first_tenth[:134].mean() < 0.2  # the P100 nodes: about a tenth of them
    state = ClusterState([node(name, 2) for name in names[:50]])
    workload = TargetWorkload((TaskType(WHOLE_1.task, None, 1.0),))
    chosen = {place(state, job(f"w{i}"), i, workload=workload)[0] for i in range(5)}
    assert chosen == {names[int(ranks[:50].argmin())]}  # idle nodes tie: same one each time


def test_cpu_only_task_avoids_stranding_gpus() -> None:
    """A CPU-only task that would leave a node without CPU for the GPU types raises F by
    that node's idle GPU; FGD puts it where CPU is plentiful."""
    workload = TargetWorkload((WHOLE_1, TaskType(TaskRequest(8000, 0, 1, 1000), None, 0.5)))
    state = ClusterState([node("tight", 4, cpu=16_000), node("roomy", 4, cpu=96_000)])
    assert place(state, job("c", gpus=0, cpu=10_000), workload=workload) == ("roomy", ())


def test_unschedulable_when_nothing_fits() -> None:
    state = gpu_cluster([[300, 300]])
    policy = make_policy(
        "fgd", {"workload": TargetWorkload((TaskType(SHARE_500.task, None, 1.0),))}
    )
    pending = [JobView(job("s", milli=500), JobStatus.PENDING)]
    result = policy.schedule(
        Snapshot(state.view(), [], pending, 0.0), Context(np.random.default_rng(0))
    )
    assert not [d for d in result.decisions if isinstance(d, Place)]


def test_a_pass_with_nothing_pending_decides_nothing() -> None:
    snapshot = Snapshot(gpu_cluster([[1000]]).view(), [], [], 0.0)
    assert make_policy("fgd").schedule(snapshot, Context(np.random.default_rng(0))).decisions == ()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="fgd mode must be one of score, artifact, exact"):
        FgdConfig(mode="fast")
    with pytest.raises(ValueError, match="fgd tolerance_milli must be >= 0"):
        FgdConfig(tolerance_milli=-1)
    with pytest.raises(ValueError, match="fgd workload must be a TargetWorkload"):
        make_policy("fgd", {"workload": "default"})
    with pytest.raises(ValueError, match="fgd delta_cache_shapes must be >= 0"):
        FgdConfig(delta_cache_shapes=-1)
    assert make_policy("fgd", {"mode": "artifact"}).describe()["mode"] == "artifact"


def test_workload_comes_from_config_then_prepare_then_snapshot() -> None:
    state = gpu_cluster([[1000, 1000]])
    sharing = [job(f"s{i}", milli=300) for i in range(3)]
    whole = [job(f"w{i}") for i in range(3)]
    view = [JobView(sharing[0], JobStatus.PENDING)]
    snapshot = Snapshot(state.view(), [JobView(w, JobStatus.RUNNING) for w in whole], view, 0.0)
    policy = Fgd()
    assert policy._workload_for(snapshot) == workload_from_jobs([sharing[0], *whole])
    policy.prepare(sharing)
    assert policy._workload_for(snapshot) == workload_from_jobs(sharing)
    fixed = TargetWorkload((TaskType(WHOLE_2.task, None, 1.0),))
    assert Fgd(FgdConfig(workload=fixed))._workload_for(snapshot) == fixed


TASKS = st.sampled_from(
    [
        TaskRequest(2000, 10, 1, 300),
        TaskRequest(4000, 10, 1, 700),
        TaskRequest(8000, 10, 1, 1000),
        TaskRequest(16000, 10, 2, 1000),
        TaskRequest(12000, 10, 4, 1000),
        TaskRequest(30000, 10),
    ]
)
WORKLOAD = TargetWorkload(
    (
        TaskType(TaskRequest(2000, 0, 1, 300), None, 0.3),
        TaskType(TaskRequest(8000, 0, 1, 1000), None, 0.3),
        TaskType(TaskRequest(16000, 0, 2, 1000), None, 0.2),
        TaskType(TaskRequest(30000), None, 0.2),
    )
)

WITH_CUT = replace(
    WORKLOAD,
    cut=(
        TaskType(TaskRequest(12000, 0, 4, 1000), None, 0.02),
        TaskType(TaskRequest(4000, 0, 1, 700), frozenset({"T4"}), 0.01),
    ),
)
"""WORKLOAD, with two rare types its coverage cut would have left out."""


def small_cluster() -> ClusterState:
    return ClusterState(
        [node("a", 8, cpu=96_000), node("b", 4, cpu=32_000), node("c", 2, "T4", cpu=64_000)]
    )


@settings(max_examples=40, deadline=None)
@given(
    tasks=st.lists(TASKS, min_size=1, max_size=40),
    mode=st.sampled_from(["score", "artifact", "exact"]),
)
def test_capacity_is_never_exceeded(tasks, mode) -> None:
    state = small_cluster()
    policy = make_policy("fgd", {"workload": WORKLOAD, "mode": mode})
    ctx = Context(np.random.default_rng(0))
    for i, task in enumerate(tasks):
        spec = JobSpec(f"j{i}", 0.0, task, job("x").work)
        result = policy.schedule(
            Snapshot(state.view(), [], [JobView(spec, JobStatus.PENDING)], 0.0), ctx
        )
        for decision in result.decisions:
            if isinstance(decision, Place):
                for t in decision.placement.tasks:
                    gpus = set(t.gpus)
                    assert len(gpus) == task.num_gpus
                    index = state.node_index[t.node]
                    free = state.gpu_free[index]
                    if task.num_gpus > 1 or task.gpu_milli == 1000:
                        assert all(free[g] == 1000 for g in gpus)  # whole GPUs only
                    state.allocate(index, t.gpus, t.gpu_milli, task.cpu_milli, task.mem_mib)
    assert (state.gpu_free >= 0).all() and (state.cpu_free >= 0).all()
    assert (state.mem_free >= 0).all()


@settings(max_examples=40, deadline=None)
@given(history=st.lists(TASKS, max_size=25), task=TASKS)
def test_exact_mode_picks_a_node_of_least_delta(history, task) -> None:
    state = small_cluster()
    policy = make_policy("fgd", {"workload": WORKLOAD, "mode": "exact", "tolerance_milli": 0})
    ctx = Context(np.random.default_rng(0))
    for i, earlier in enumerate([*history, task]):
        spec = JobSpec(f"j{i}", 0.0, earlier, job("x").work)
        before = node_fragmentation(state, WORKLOAD)
        feasible = brute_force_deltas(state, earlier, before)
        result = policy.schedule(
            Snapshot(state.view(), [], [JobView(spec, JobStatus.PENDING)], 0.0), ctx
        )
        placed = [d for d in result.decisions if isinstance(d, Place)]
        assert bool(placed) == bool(feasible)
        if not placed:
            continue
        (t,) = placed[0].placement.tasks
        index = state.node_index[t.node]
        state.allocate(index, t.gpus, t.gpu_milli, earlier.cpu_milli, earlier.mem_mib)
        chosen = node_fragmentation(state, WORKLOAD)[index] - before[index]
        assert chosen == pytest.approx(min(feasible.values()), abs=1e-6)


def brute_force_deltas(state: ClusterState, task: TaskRequest, before: np.ndarray) -> dict:
    """Δ of every feasible (node, GPU choice), by placing on a copy and re-measuring."""
    out = {}
    for index in range(state.num_nodes):
        if state.cpu_free[index] < task.cpu_milli or state.mem_free[index] < task.mem_mib:
            continue
        free = state.gpu_free[index, : state.gpu_count[index]]
        choices: list[tuple[int, ...]] = [()]
        if task.is_sharing:
            choices = [(int(g),) for g in np.flatnonzero(free >= task.gpu_milli)]
        elif task.num_gpus:
            whole = [int(g) for g in np.flatnonzero(free == 1000)]
            choices = [tuple(whole[: task.num_gpus])] if len(whole) >= task.num_gpus else []
        for gpus in choices:
            trial = state.copy()
            trial.allocate(index, gpus, task.gpu_milli, task.cpu_milli, 0)
            out[(index, gpus)] = node_fragmentation(trial, WORKLOAD)[index] - before[index]
    return out


REPLAY_PODS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,creation_time,deletion_time
p0,4000,8192,1,500,,0,100
p1,8000,16384,1,1000,,0,50
p2,2000,4096,0,0,,10,60
p3,16000,32768,2,1000,,20,200
p4,4000,8192,1,300,T4,30,90
p5,6000,8192,1,1000,G2|V100M16,30,300
p6,4000,8192,1,500,,40,80
p7,4000,8192,4,1000,,60,120
"""
REPLAY_NODES = """sn,cpu_milli,memory_mib,gpu,model
node-b,32000,131072,4,V100M16
node-a,64000,262144,8,G2
node-c,16000,65536,2,T4
"""


@pytest.fixture
def replay_files(tmp_path: Path) -> tuple[Path, Path]:
    pods = tmp_path / "pods.csv"
    pods.write_text(REPLAY_PODS)
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(REPLAY_NODES)
    return pods, nodes


@pytest.mark.parametrize("mode", ["score", "exact"])
def test_replay_of_an_openb_trace_through_the_cli(replay_files, tmp_path, mode) -> None:
    """`gpufleet simulate --format openb --policy fgd`: tasks arrive and leave at their
    creation and deletion times; FGD builds M from the trace tasks in each snapshot."""
    pods, nodes = replay_files
    out = tmp_path / "run"
    argv = ["simulate", "--trace", str(pods), "--format", "openb", "--cluster", str(nodes)]
    assert main([*argv, "--policy", "fgd", "-o", f"mode={mode}", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 8 and summary["unfinished"] == 0


def test_replay_through_the_engine_with_the_whole_trace_as_workload(replay_files) -> None:
    pods, nodes = replay_files
    jobs = list(read_jobs(pods))
    policy = Fgd()
    policy.prepare(jobs)
    recorder = Simulation(read_nodes(nodes), jobs, policy).run()
    assert recorder.summary()["completed"] == len(jobs)
    assert policy._fragmentation is not None
    assert policy._fragmentation.workload == workload_from_jobs(jobs)


@settings(max_examples=30, deadline=None)
@given(tasks=st.lists(TASKS, min_size=1, max_size=40), mode=st.sampled_from(MODES))
def test_the_delta_cache_changes_no_placement(tasks, mode) -> None:
    """`delta_cache_shapes=0` (every Δ and cut types' fragment recomputed) is the
    benchmark's uncached baseline."""
    placements = []
    for shapes in (256, 1, 0):
        state = small_cluster()
        options = {"workload": WITH_CUT, "mode": mode, "delta_cache_shapes": shapes}
        policy = make_policy("fgd", options)
        ctx = Context(np.random.default_rng(0))
        chosen = []
        for i, task in enumerate(tasks):
            spec = JobSpec(f"j{i}", 0.0, task, job("x").work)
            snapshot = Snapshot(state.view(), [], [JobView(spec, JobStatus.PENDING)], 0.0)
            for decision in policy.schedule(snapshot, ctx).decisions:
                if isinstance(decision, Place):
                    for t in decision.placement.tasks:
                        index = state.node_index[t.node]
                        state.allocate(index, t.gpus, t.gpu_milli, task.cpu_milli, task.mem_mib)
                        chosen.append((i, t.node, t.gpus))
        placements.append(chosen)
    assert placements[0] == placements[1] == placements[2]


@settings(max_examples=40, deadline=None)
@given(history=st.lists(TASKS, max_size=25), task=TASKS, seed=st.integers(0, 2**16))
def test_default_takes_a_best_scoring_node_and_needs_no_model_constraint_to_match(
    history, task, seed
) -> None:
    """Without model-constrained types the default's Δ is the paper's, and whichever
    tied node it draws has the artifact's best score."""
    state = small_cluster()
    ctx = Context(np.random.default_rng(seed))
    policy = make_policy("fgd", {"workload": WORKLOAD})
    for i, earlier in enumerate([*history, task]):
        spec = JobSpec(f"j{i}", 0.0, earlier, job("x").work)
        candidates = np.flatnonzero(
            (state.cpu_free >= earlier.cpu_milli)
            & ((state.gpu_free >= earlier.gpu_milli).sum(axis=1) >= earlier.num_gpus)
        )
        snapshot = Snapshot(state.view(), [], [JobView(spec, JobStatus.PENDING)], 0.0)
        if not candidates.size:
            assert not isinstance(policy.schedule(snapshot, ctx).decisions[0], Place)
            continue
        paper = NodeFragmentation(WORKLOAD)
        paper.sync(state)
        weighted = NodeFragmentation(WORKLOAD, scarcity=True)
        weighted.sync(state)
        np.testing.assert_array_equal(
            weighted.placement_deltas(state, earlier, candidates),
            paper.placement_deltas(state, earlier, candidates),
        )
        best = artifact_scores(paper.placement_deltas(state, earlier, candidates)).max(axis=1)
        (decision,) = policy.schedule(snapshot, ctx).decisions
        assert isinstance(decision, Place)
        (placed,) = decision.placement.tasks
        index = state.node_index[placed.node]
        assert best[list(candidates).index(index)] == best.max()
        state.allocate(index, placed.gpus, placed.gpu_milli, earlier.cpu_milli, 10)
