"""Inference shares of CTJs (`spec.inference`) in both hosts: the share a stream's serving
holds while its model retrains is reserved before the window's retraining is placed, and
no policy places over it.

Hand-worked, one node of 2 A100s; the stream of tests/test_ctj_elastic.py (work 80
reference-GPU-seconds, up to 2 GPUs at 0.9 speed-up per doubling, window 120 s, deadline
100 s) serving with a whole GPU (`milliGpu: 1000`). Under `edf` (no inference planner:
full demand) the serving share takes GPU 0, so the retraining gets GPU 1 alone: 80 s on
one GPU, where without the share it runs on both, 80 / 1.8 = 44.4 s.

The live scheduler runs with a device backend that shares GPUs (`hami`), as the
simulator's nodes do: with `whole` a share holds all of its GPU (tests/test_gpu_sharing.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from controller.ctj.continual import opening, serving_ends
from controller.ctj.crd import ctj_from_json
from controller.ctj.inference import SnapshotSource, plan_openings, reservation_key, serve
from controller.ctj.plan import plan
from controller.ctj.streams import recorded_streams
from controller.kube.objects import ASSIGNED_GPUS, pod_from_json
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import Hami, WholeGpu
from controller.scheduling.ledger import Charge
from controller.scheduling.scheduler import Scheduler, SchedulerOptions
from controller.scheduling.workload import build_workload
from policies import NodeSpec, Policy, make_policy
from policies.continual import AccuracyCurve, StreamSpec, WindowPlanner, window_info
from policies.windows import Window
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.test_controller_scheduler import node_json
from tests.test_ctj_elastic import CREATED, GrowingEffects, ctj_json, streams, window_pod

CURVE = AccuracyCurve(ceiling=0.9, floor=0.3, decay_per_h=0.0, half_gain_gpu_s=20.0)
NODE = NodeSpec("a", 32_000, 131_072, 2, "A100")


def view_of(cache: ClusterCache, policy: Policy) -> SnapshotSource:
    """What the controller plans openings on: its scheduler's view of the cluster."""
    options = SchedulerOptions(external_rounds=True)
    return Scheduler(policy, cache, GrowingEffects(cache), options).snapshot_now  # type: ignore[arg-type]


def served_stream(inference_milli: int) -> StreamSpec:
    """tests/test_ctj_elastic.py's `wide`, on up to 2 GPUs, serving with a share."""
    wide = next(s for s in streams() if s.id == "wide")
    return replace(wide, max_gpus=2, inference_milli=inference_milli)


def simulated(inference_milli: int) -> tuple[float, float]:
    """The window's end and GPU-seconds in the simulator under edf."""
    run = ContinualRun([NODE], [served_stream(inference_milli)], make_policy("edf"))
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    (row,) = run.rows
    return float(row[col["end_s"]]), float(row[col["gpu_s"]])


def test_the_serving_share_is_held_before_retraining_in_the_simulator() -> None:
    assert simulated(0) == (pytest.approx(80 / 1.8), pytest.approx(2 * 80 / 1.8))
    assert simulated(1000) == (pytest.approx(80.0), pytest.approx(80.0))


def served_ctj(milli: int) -> dict[str, Any]:
    body = ctj_json("wide")
    body["spec"]["replicas"]["max"] = 2
    body["spec"]["inference"] = {"milliGpu": milli}
    return body


def test_the_ctj_field_becomes_the_streams_inference_share() -> None:
    ctj = ctj_from_json(served_ctj(750))
    assert (ctj.spec.inference_milli, ctj.spec.inference_gamma) == (750, 0.5)
    window = Window(0, CREATED, CREATED + 100, CREATED + 120)
    assert opening(ctj, window, 0.8).stream.inference_milli == 750
    bad = served_ctj(750)
    bad["spec"]["inference"]["gamma"] = 0
    problem = ctj_from_json(bad).problem
    assert problem is not None and problem.field == "spec.inference.gamma"


def test_the_controller_reserves_the_share_and_places_retraining_beside_it() -> None:
    async def main() -> None:
        cache = ClusterCache(Hami())
        cache.replace(NODES, [node_json("a", 2)])
        effects = GrowingEffects(cache)
        edf = make_policy("edf")
        scheduler = Scheduler(
            edf,
            cache,
            effects,  # type: ignore[arg-type]
            SchedulerOptions(external_rounds=True),
            clock=lambda: CREATED + 1,
        )
        ctj = ctj_from_json(served_ctj(1000))
        window = Window(0, CREATED, CREATED + 100, CREATED + 120)
        held = serve(edf, cache, [opening(ctj, window, 0.8)], scheduler.snapshot_now)
        assert held == {"ns/wide": 1000}
        state = cache.ledger.state
        assert state is not None and state.gpu_free[0].tolist() == [0, 1000]
        loop = asyncio.create_task(scheduler.run())
        try:
            pod = window_pod("wide")
            pod["metadata"]["annotations"]["ctj.gpufleet.io/max-replicas"] = "2"
            cache.apply(PODS, "ADDED", pod)
            scheduler.request_round()
            await scheduler.wait_idle()
            assert not effects.added  # no second GPU to grow onto
            ((name, node, notes),) = effects.binds
            assert (name, node, notes[ASSIGNED_GPUS]) == ("wide-w0-0", "a", "1")
        finally:
            loop.cancel()
        cache.unreserve(reservation_key("ns/wide"))
        assert state.gpu_free[0].tolist() == [1000, 0]

    asyncio.run(main())


def test_thief_splits_the_share_live_as_in_the_simulator() -> None:
    """A model at 0.5 whose serving barely suffers from a smaller share (γ = 0.05):
    thief's `plan_inference` grants a quarter of the demand, in the simulator and when
    the controller asks it on the same opening and cluster, and that is what is held."""
    body = served_ctj(1000)
    body["spec"]["inference"]["gamma"] = 0.05
    body["spec"]["accuracy"]["initial"] = 0.5
    cache = ClusterCache(Hami())
    cache.replace(NODES, [node_json("a", 2)])
    window = Window(0, CREATED, CREATED + 100, CREATED + 120)
    thief = make_policy("thief")
    live = serve(thief, cache, [opening(ctj_from_json(body), window, 0.5)], view_of(cache, thief))
    stream = replace(served_stream(1000), initial_accuracy=0.5, inference_gamma=0.05)
    run = ContinualRun([NODE], [stream], make_policy("thief"))
    run.run()
    assert run.summary()["inference_grant_share"] == 0.25
    assert live == {"ns/wide": 250}
    state = cache.ledger.state
    assert state is not None and state.gpu_free[0].tolist() == [750, 1000]


def test_an_unchanged_share_keeps_its_gpu() -> None:
    """As in the simulator, a grant that does not change is not moved, although the
    tightest fit would now be elsewhere: released, GPU 0 would have 1000 free and GPU 1,
    with 250 taken, 750."""
    cache = ClusterCache(Hami())
    cache.replace(NODES, [node_json("a", 2)])
    assert cache.reserve("inference/ns/s", 500, [0]) == 500
    cache.ledger.charge("other", Charge("a", (1,), 250, 0, 0))
    state = cache.ledger.state
    assert state is not None and state.gpu_free[0].tolist() == [500, 750]
    assert cache.reserve("inference/ns/s", 500, [0]) == 500
    assert state.gpu_free[0].tolist() == [500, 750]
    assert cache.reserve("inference/ns/s", 250, [0]) == 250  # changed: re-placed, tightest
    assert state.gpu_free[0].tolist() == [1000, 500]


def test_the_granted_shares_serving_quality_scales_the_windows_value_live() -> None:
    """thief's quarter share (γ = 0.05) serves at 0.25^0.05 of the model's accuracy: the
    window's pod says so and the scheduler's job values the window with it, as the
    simulator's window job does (`WindowInfo.serving`)."""
    body = served_ctj(1000)
    body["spec"]["inference"]["gamma"] = 0.05
    body["spec"]["accuracy"]["initial"] = 0.5
    ctj = ctj_from_json(body)
    cache = ClusterCache(Hami())
    cache.replace(NODES, [node_json("a", 2)])
    window = Window(0, CREATED, CREATED + 100, CREATED + 120)
    thief = make_policy("thief")
    view = view_of(cache, thief)
    (choice,) = plan_openings(thief, cache, [opening(ctj, window, 0.5)], view, [])
    stream = replace(served_stream(1000), initial_accuracy=0.5, inference_gamma=0.05)
    assert choice.serving == stream.serving_quality(250) == pytest.approx(0.25**0.05)
    (manifest,) = plan(ctj, [], CREATED + 1, "gpufleet", lambda _opening: choice).create
    meta = {**manifest["metadata"], "uid": "u0", "creationTimestamp": now_rfc3339(CREATED + 1)}
    pod = pod_from_json({**manifest, "metadata": meta, "status": {"phase": "Pending"}})
    (job,) = build_workload([pod], {}, WholeGpu()).pending
    live = window_info(job.spec)
    simulated = window_info(stream.window_job(0, choice.config, 0.5, serving=choice.serving))
    assert live is not None and simulated is not None
    assert live.serving == simulated.serving == choice.serving
    assert live.uplift(CREATED + 50) == pytest.approx(simulated.uplift(50.0))
    assert live.uplift(CREATED + 50) < replace(live, serving=1.0).uplift(CREATED + 50)


def test_a_share_goes_on_the_model_slowest_for_every_ctj_not_only_the_openings() -> None:
    """The opening CTJ retrains as fast on a T4 as on an A100 (a tie: A100 sorts first);
    two other CTJs, not opening now, retrain at a fifth of the speed on the T4. As the
    simulator orders GPU models over all its streams, the share goes on the T4."""
    cache = ClusterCache(Hami())
    t4 = node_json("t", 1)
    t4["metadata"]["labels"]["nvidia.com/gpu.product"] = "T4"
    cache.replace(NODES, [node_json("a", 1), t4])
    body = served_ctj(500)
    body["spec"]["resources"]["gpuTypes"] = [
        {"model": "A100", "relativeThroughput": 1.0},
        {"model": "T4", "relativeThroughput": 1.0},
    ]
    openings = [opening(ctj_from_json(body), Window(0, CREATED, CREATED + 100, CREATED + 120), 0.8)]
    others = [{"A100": 1.0, "T4": 0.2}] * 2
    state = cache.ledger.state
    assert state is not None
    everyone = [openings[0].stream.throughput, *others]
    edf = make_policy("edf")
    view = view_of(cache, edf)
    assert serve(edf, cache, openings, view, everyone) == {"ns/wide": 500}
    assert state.gpu_free[:, 0].tolist() == [1000, 500]  # node a (A100), node t (T4)
    cache.unreserve(reservation_key("ns/wide"))
    assert serve(edf, cache, openings, view) == {"ns/wide": 500}
    assert state.gpu_free[:, 0].tolist() == [500, 1000]  # the openings alone: the A100


def test_a_ctjs_share_is_freed_when_its_last_window_ends_as_the_streams() -> None:
    """The simulator frees a stream's share at its last window's end (where it ends);
    the reconciler frees a CTJ's there too, and not while windows remain."""
    job = ctj_from_json(served_ctj(1000))
    first = plan(job, [], CREATED + 1, "gpufleet")
    assert serving_ends(first.status) is None
    job = replace(job, status=first.status)
    missed = plan(job, [], CREATED + 101, "gpufleet")  # window 0 (of 1) went by unbound
    assert missed.status.phase == "Completed"
    assert serving_ends(missed.status) == CREATED + 120


def agreement_ctj(name: str, work: tuple[float, ...], opens: float) -> dict[str, Any]:
    """A CTJ on up to 4 A100s with one config per work amount, opening at `opens`."""
    body = served_ctj(0)
    del body["spec"]["inference"]
    spec = body["spec"]
    body["metadata"]["name"] = name
    spec["replicas"]["max"] = 4
    spec["retrain"].update(startTime=now_rfc3339(CREATED + opens), windowSeconds=10)
    spec["retrain"].update(deadlineSeconds=8, windows=1)
    spec["retrain"]["configs"] = [
        {"name": f"w{w:g}", "workGpuSeconds": w, "quality": 0.6 if w < 2 else 1.0} for w in work
    ]
    spec["accuracy"]["initial"] = 0.5
    spec["accuracy"]["halfGainGpuSeconds"] = 2.0
    return body


def test_a_waiting_window_delays_the_openings_configs_live_as_in_the_simulator() -> None:
    """`stuck` (work 40: no share of 4 A100s does it by its deadline) waits from 0 s;
    `late` opens at 5 s with a 1.2 and a 2.5 GPU-second config. thief's fluid plan sees
    the waiting work ahead of `late` and picks the smaller config, in the simulator and
    live (the controller's snapshot has the waiting pods' jobs); without the waiting
    job it would pick the larger."""
    stuck, late = agreement_ctj("stuck", (40.0,), 0.0), agreement_ctj("late", (1.2, 2.5), 5.0)
    streams = recorded_streams([ctj_from_json(stuck), ctj_from_json(late)], CREATED)
    run = ContinualRun([NodeSpec("a", 32_000, 131_072, 4, "A100")], streams, make_policy("thief"))
    run.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    configs = {r[col["stream_id"]]: r[col["config"]] for r in run.rows}
    assert configs == {"ns/stuck": "w40", "ns/late": "w1.2"}

    cache = ClusterCache(Hami())
    cache.replace(NODES, [node_json("a", 4)])
    (waiting,) = plan(ctj_from_json(stuck), [], CREATED + 1, "gpufleet").create
    meta = {**waiting["metadata"], "uid": "u0", "creationTimestamp": now_rfc3339(CREATED + 1)}
    cache.apply(PODS, "ADDED", {**waiting, "metadata": meta, "status": {"phase": "Pending"}})
    job = ctj_from_json(late)
    window = Window(0, CREATED + 5, CREATED + 13, CREATED + 15)
    openings = [opening(job, window, 0.5)]
    thief = make_policy("thief")
    view = view_of(cache, thief)
    (choice,) = plan_openings(thief, cache, openings, view, [])
    assert job.spec.configs[choice.config].name == "w1.2"
    snapshot = view(CREATED + 5)
    assert snapshot is not None
    alone = replace(snapshot, pending=[])
    assert isinstance(thief, WindowPlanner)
    assert [job.spec.configs[c].name for c in thief.plan_windows(openings, alone)] == ["w2.5"]
