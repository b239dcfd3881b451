"""The placement contract: one hand-worked case per rule, the simulator applying it, and a
property that every registered policy's placements keep it (and never move a job that
may not be preempted)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    ClusterState,
    Context,
    Elasticity,
    JobSpec,
    JobStatus,
    JobView,
    NodeSpec,
    Place,
    Placement,
    PlacementError,
    Policy,
    Preempt,
    Resize,
    SchedulingResult,
    Snapshot,
    Taint,
    TaskPlacement,
    TaskRequest,
    Toleration,
    check_fits,
    check_placement,
    check_shape,
    make_policy,
    policy_class,
    policy_names,
)
from policies.continual import AccuracyCurve, RetrainConfig, StreamSpec
from policies.elastic import GoodputHints
from policies.placement import release, take
from simulator.engine import Simulation
from simulator.state import SimCluster
from tests.conftest import job, node

PART = TaskRequest(cpu_milli=2000, mem_mib=100, num_gpus=1, gpu_milli=200)


def cluster() -> ClusterState:
    return ClusterState(
        [
            NodeSpec("n0", 4000, 8000, gpus=4, gpu_model="V100", labels={"zone": "a"}),
            NodeSpec("n1", 64_000, 64_000, gpus=2, gpu_model="A100", taints=(Taint("gpu"),)),
            NodeSpec("cpu0", 16_000, 16_000),
        ]
    )


def on(node_name: str, *gpus: int, milli: int = 1000) -> TaskPlacement:
    return TaskPlacement(node_name, tuple(gpus), milli if gpus else 0)


# -- static rules -------------------------------------------------------------------------


def test_a_rigid_job_places_exactly_its_replicas() -> None:
    spec = job("j", gpus=1, replicas=3)
    check_shape(spec, Placement((on("n0", 0), on("n0", 1), on("n0", 2))), cluster())
    with pytest.raises(PlacementError, match=r"job j: 2 replica task\(s\) placed, its spec has 3"):
        check_shape(spec, Placement((on("n0", 0), on("n0", 1))), cluster())


def test_an_elastic_job_places_between_its_bounds() -> None:
    spec = job("e", gpus=1, replicas=2, elastic=Elasticity(1, 3))
    check_shape(spec, Placement((on("n0", 0),)), cluster())
    four = Placement(tuple(on("n0", g) for g in range(4)))
    with pytest.raises(PlacementError, match=r"job e: 4 .* outside its elastic bounds 1\.\.3"):
        check_shape(spec, four, cluster())


def test_auxiliary_parts_do_not_count_as_replicas() -> None:
    spec = job("d", gpus=1)
    part = TaskPlacement("n0", (1,), 200, part="preprocess", request=PART)
    check_shape(spec, Placement((on("n0", 0), part)), cluster())


def test_the_node_must_exist() -> None:
    with pytest.raises(PlacementError, match="job j: a task is placed on unknown node 'n9'"):
        check_shape(job("j"), Placement((on("n9", 0),)), cluster())


def test_each_task_takes_exactly_its_gpu_count() -> None:
    spec = job("j", gpus=2)
    check_shape(spec, Placement((on("n0", 0, 1),)), cluster())
    with pytest.raises(PlacementError, match=r"task on n0 has 1 GPU\(s\), its request 2"):
        check_shape(spec, Placement((on("n0", 0),)), cluster())
    # Two one-GPU tasks are not one two-GPU pod.
    with pytest.raises(PlacementError, match="2 replica"):
        check_shape(spec, Placement((on("n0", 0), on("n0", 1))), cluster())


def test_gpu_indices_are_distinct_and_on_the_node() -> None:
    spec = job("j", gpus=2)
    with pytest.raises(PlacementError, match=r"repeats a GPU index \(1, 1\)"):
        check_shape(spec, Placement((on("n0", 1, 1),)), cluster())
    with pytest.raises(PlacementError, match=r"names GPU\(s\) \(1, 2\); the node has 2"):
        check_shape(spec, Placement((TaskPlacement("n1", (1, 2), 1000),)), allowed_all())


def test_each_gpu_takes_the_requested_milli() -> None:
    spec = job("f", milli=500)
    check_shape(spec, Placement((on("n0", 0, milli=500),)), cluster())
    with pytest.raises(PlacementError, match="takes 1000 milli per GPU, its request 500"):
        check_shape(spec, Placement((on("n0", 0),)), cluster())


def test_an_elastic_one_gpu_replica_may_take_a_time_slice() -> None:
    sliced = Placement((on("n0", 0, milli=250),))
    check_shape(job("e", elastic=Elasticity(1, 4)), sliced, cluster())
    with pytest.raises(PlacementError, match="takes 250 milli"):
        check_shape(job("r"), sliced, cluster())


def test_a_cpu_only_task_takes_no_gpu() -> None:
    spec = job("c", gpus=0, cpu=2000)
    check_shape(spec, Placement((on("cpu0"),)), cluster())
    with pytest.raises(PlacementError, match=r"has 1 GPU\(s\), its request 0"):
        check_shape(spec, Placement((TaskPlacement("n0", (0,), 0),)), cluster())
    with pytest.raises(PlacementError, match="takes 300 milli per GPU, its request 0"):
        check_shape(spec, Placement((TaskPlacement("cpu0", (), 300),)), cluster())


def test_gpu_tasks_land_on_allowed_models() -> None:
    spec = job("m", allowed_models=frozenset({"A100"}))
    with pytest.raises(PlacementError, match="GPU model 'V100' is not allowed"):
        check_shape(spec, Placement((on("n0", 0),)), cluster())
    # A CPU-only task has no model to mind.
    check_shape(
        job("c", gpus=0, allowed_models=frozenset({"A100"})), Placement((on("n0"),)), cluster()
    )


def test_the_node_selector_must_match() -> None:
    spec = job("s", gpus=0, node_selector={"zone": "a"})
    check_shape(spec, Placement((on("n0"),)), cluster())
    with pytest.raises(PlacementError, match=r"cpu0, which does not match its node selector"):
        check_shape(spec, Placement((on("cpu0"),)), cluster())


def test_taints_must_be_tolerated() -> None:
    placement = Placement((on("n1", 0),))
    with pytest.raises(PlacementError, match="n1, whose taints it does not tolerate"):
        check_shape(job("t"), placement, cluster())
    check_shape(job("t", tolerations=(Toleration("gpu", exists=True),)), placement, cluster())


def test_a_part_is_held_to_its_own_request() -> None:
    spec = job("d", gpus=1)
    wrong = TaskPlacement("n0", (1,), 300, part="preprocess", request=PART)
    with pytest.raises(PlacementError, match="part 'preprocess' on n0 takes 300 milli"):
        check_shape(spec, Placement((on("n0", 0), wrong)), cluster())
    tainted = TaskPlacement("n1", (1,), 200, part="preprocess", request=PART)
    with pytest.raises(PlacementError, match="part 'preprocess' on n1, whose taints"):
        check_shape(spec, Placement((on("n0", 0), tainted)), cluster())


def allowed_all() -> ClusterState:
    """`cluster()` without n1's taint."""
    nodes = [
        n if n.name != "n1" else NodeSpec("n1", 64_000, 64_000, 2, "A100") for n in cluster().nodes
    ]
    return ClusterState(nodes)


# -- what is free now -----------------------------------------------------------------------


def test_tasks_on_one_node_need_the_sum_of_their_cpu() -> None:
    state = cluster()
    spec = job("j", cpu=1500, replicas=3)  # n0 has 4000 CPU: two fit, three do not
    two_nodes = Placement((on("n0", 0), on("n0", 1), TaskPlacement("n1", (0,), 1000)))
    check_fits(spec, two_nodes, state)
    with pytest.raises(PlacementError, match="needs 4500 CPU milli on n0, only 4000 free"):
        check_fits(spec, Placement((on("n0", 0), on("n0", 1), on("n0", 2))), state)


def test_memory_is_counted_per_node() -> None:
    spec = job("j", gpus=0, cpu=0, mem=5000, replicas=2)
    with pytest.raises(PlacementError, match="needs 10000 memory MiB on n0, only 8000 free"):
        check_fits(spec, Placement((on("n0"), on("n0"))), cluster())


def test_sharing_tasks_on_one_gpu_need_the_sum_of_their_milli() -> None:
    state = cluster()
    state.allocate(0, (0,), 300, 0, 0)
    spec = job("f", milli=400, cpu=0, mem=0, replicas=2)
    with pytest.raises(PlacementError, match="needs 800 milli-GPU on n0 GPU 0, only 700 free"):
        check_fits(spec, Placement((on("n0", 0, milli=400), on("n0", 0, milli=400))), state)
    before = state.gpu_free.copy(), state.cpu_free.copy()
    check_fits(spec, Placement((on("n0", 0, milli=400), on("n0", 1, milli=400))), state)
    assert (state.gpu_free == before[0]).all() and (state.cpu_free == before[1]).all()


def test_check_placement_applies_both_halves() -> None:
    state = cluster()
    state.allocate(0, (0, 1, 2, 3), 1000, 0, 0)
    with pytest.raises(PlacementError, match="GPU 0, only 0 free"):
        check_placement(job("j", cpu=0), Placement((on("n0", 0),)), state)
    with pytest.raises(PlacementError, match="unknown node"):
        check_placement(job("j"), Placement((on("n7", 0),)), state)


# -- the simulator applies every decision through the contract ----------------------------


class PlacesTwoOneGpuTasks(Policy):
    """A broken policy: one task per GPU for a two-GPU pod."""

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        return SchedulingResult(
            tuple(
                Place(v.id, Placement((on("n0", 0), on("n0", 1))), "bad") for v in snapshot.pending
            )
        )


def test_the_simulator_refuses_a_placement_that_breaks_the_contract() -> None:
    sim = Simulation([node("n0", gpus=2)], [job("pod", gpus=2)], PlacesTwoOneGpuTasks())
    with pytest.raises(PlacementError, match=r"PlacesTwoOneGpuTasks: job pod: 2 replica"):
        sim.run()
    assert sim.cluster.state.gpu_free[0, :2].tolist() == [1000, 1000]  # nothing taken


def test_bind_checks_what_is_free_now() -> None:
    sim = SimCluster(ClusterState([node("n0", gpus=2, cpu=1000)]))
    from simulator.state import JobRun

    pod = JobRun(spec=job("pod", cpu=1000), seq=0)
    sim.bind(pod, Placement((on("n0", 0),)))
    other = JobRun(spec=job("other", cpu=1000), seq=1)
    with pytest.raises(PlacementError, match="job other: needs 1000 CPU milli on n0, only 0"):
        sim.bind(other, Placement((on("n0", 1),)))
    assert sim.state.gpu_free[0, 1] == 1000


# -- every registered policy keeps the contract -------------------------------------------

MODELS = ("A100", "V100")
BUILTIN = [n for n in policy_names() if policy_class(n).__module__.startswith("policies.")]


@st.composite
def nodes(draw: st.DrawFn) -> list[NodeSpec]:
    count = draw(st.integers(1, 4))
    specs = []
    for i in range(count):
        gpus = draw(st.sampled_from([0, 1, 2, 4]))
        tainted = draw(st.integers(0, 4)) == 0
        specs.append(
            NodeSpec(
                f"n{i}",
                draw(st.sampled_from([4000, 16_000, 64_000])),
                draw(st.sampled_from([16_000, 64_000])),
                gpus=gpus,
                gpu_model=draw(st.sampled_from(MODELS)) if gpus else "",
                labels={"zone": draw(st.sampled_from("ab"))},
                taints=(Taint("dedicated"),) if tainted else (),
            )
        )
    return specs


@st.composite
def job_specs(draw: st.DrawFn, job_id: str) -> JobSpec:
    gpus = draw(st.sampled_from([0, 1, 1, 2]))
    milli = draw(st.sampled_from([250, 500, 1000])) if gpus == 1 else 1000
    replicas = draw(st.integers(1, 3))
    elastic = Elasticity(1, 4) if gpus == 1 and milli == 1000 and draw(st.booleans()) else None
    return job(
        job_id,
        gpus=gpus,
        milli=milli,
        cpu=draw(st.sampled_from([0, 1000, 8000, 30_000])),
        mem=draw(st.sampled_from([0, 1000, 32_000])),
        replicas=replicas,
        submit=float(draw(st.integers(0, 50))),
        duration=float(draw(st.integers(10, 5000))),
        elastic=elastic,
        allowed_models=draw(st.sampled_from([None, frozenset({"A100"})])),
        node_selector=draw(st.sampled_from([{}, {"zone": "a"}])),
        tolerations=draw(st.sampled_from([(), (Toleration("dedicated", exists=True),)])),
        preemptible=draw(st.booleans()),
    )


def window_job(job_id: str, milli: int, preemptible: bool) -> JobSpec:
    stream = StreamSpec(
        id=job_id,
        start_s=0.0,
        window_s=600.0,
        windows=1,
        deadline_s=600.0,
        task=TaskRequest(1000, 1000, 1, milli),
        throughput=dict.fromkeys(MODELS, 1.0),
        curve=AccuracyCurve(0.9, 0.5, 0.0, half_gain_gpu_s=60.0),
        configs=(RetrainConfig("only", 60.0, 1.0),),
        initial_accuracy=0.6,
        max_gpus=2,
    )
    return dataclasses.replace(stream.window_job(0, 0, 0.6), preemptible=preemptible)


def bootstrap_hints() -> GoodputHints:
    """An adaptive job that has not run yet (Sia places it on one GPU of a model)."""
    return GoodputHints(
        mode="adaptive",
        init_batch_size=32,
        max_batch_size=1024,
        target_batch_size=128,
        target_replicas=2,
        local_bsz_bounds=dict.fromkeys(MODELS, (8, 64)),
        probe_throughput=dict.fromkeys(MODELS, 100.0),
        max_nodes=dict.fromkeys(MODELS, 2),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[ClusterState, Snapshot]:
    """A cluster with some jobs running (placed by best fit) and some waiting; window
    jobs and adaptive Sia jobs among them."""
    state = ClusterState(draw(nodes()))
    host = SimCluster(state)
    placer = make_policy("bestfit")
    ctx = Context(np.random.default_rng(0))
    running, pending = [], []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["plain", "plain", "plain", "window", "adaptive"]))
        if kind == "window":
            spec = window_job(f"w{i}", draw(st.sampled_from([500, 1000])), draw(st.booleans()))
        else:
            spec = draw(job_specs(f"j{i}"))
        hints = bootstrap_hints() if kind == "adaptive" and spec.elastic else None
        placement = placer.place(spec, state.scratch(), ctx) if draw(st.booleans()) else None
        if placement is None:
            pending.append(JobView(spec, JobStatus.PENDING, hints=hints, queued_since=60.0))
            continue
        take(state, spec, placement)
        shape = host.shape_of(placement)
        running.append(
            JobView(
                spec,
                JobStatus.RUNNING,
                placement,
                shape,
                attained_gpu_s=float(draw(st.integers(0, 50_000))),
                service_since=60.0,
                started_at=0.0,
                hints=hints,
            )
        )
    return state, Snapshot(state.view(), running, pending, now=60.0)


def apply_as_host(state: ClusterState, snapshot: Snapshot, result: SchedulingResult) -> None:
    """Release what is preempted or resized, then check and take every placement, in the
    order the simulator applies them."""
    views = {v.id: v for v in (*snapshot.running, *snapshot.pending)}
    for decision in result.decisions:
        if isinstance(decision, Preempt | Resize):
            view = views[decision.job_id]
            assert view.status is JobStatus.RUNNING and view.placement is not None
            assert view.spec.preemptible, f"{decision} moves a job that may not be preempted"
            release(state, view.spec, view.placement)
    for kind in (Resize, Place):
        for decision in result.of_type(kind):
            assert isinstance(decision, Place | Resize)
            spec = views[decision.job_id].spec
            check_placement(spec, decision.placement, state)
            take(state, spec, decision.placement)


@pytest.mark.parametrize("name", BUILTIN)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=snapshots())
def test_every_policy_keeps_the_contract(name: str, drawn: tuple[ClusterState, Snapshot]) -> None:
    state, snapshot = drawn
    result = make_policy(name).schedule(snapshot, Context(np.random.default_rng(1)))
    apply_as_host(state.copy(), snapshot, result)


def test_the_property_covers_every_policy_family() -> None:
    assert {"bestfit", "fgd", "las", "sia", "gavel", "thief", "edf", "fairshare", "rap"} <= set(
        BUILTIN
    )
