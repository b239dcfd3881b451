"""GPUs that cannot be shared (`NodeSpec.shares_gpus` false, the controller's
`--backend=whole`): a task with a share of a GPU there holds all of it, and the share
allocators plan whole GPUs there, in the simulator and through the controller's scheduler.

Hand-worked, one node of one A100; two streams (`p`, `q`) of half a GPU each, up to one
GPU, both at accuracy 0.5 (ceiling 0.9, floor 0.3, no decay, h = 50), one config of 50
reference-GPU-seconds; windows open at 1 s (deadline 251 s), rounds every 2 s.

* GPUs shared: the round at 2 s gives each half of the GPU (value per milli-GPU is
  highest there), so both finish at 2 + 50 / 0.5 = 102 s.
* Not shared: a half would hold the whole GPU, so none is offered: `p` (ties go by id)
  gets the whole GPU at 2 s and ends at 52 s, `q` gets it in the round at 52 s and ends
  at 102 s. Each uses 50 GPU-seconds either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import ctj_from_json
from controller.ctj.plan import plan
from controller.kube.objects import ASSIGNED_GPUS, ASSIGNED_MILLI, node_from_json
from controller.recorder import TraceRecorder
from controller.scheduling.cache import NODES, ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import GpuEncoder, Hami, WholeGpu
from controller.scheduling.workload import node_spec
from policies import (
    ClusterState,
    FixedDuration,
    JobSpec,
    NodeSpec,
    Placement,
    TaskPlacement,
    TaskRequest,
    make_policy,
)
from policies.continual import AccuracyCurve, RetrainConfig, StreamSpec
from policies.contract import PlacementError, check_fits
from simulator.continual import STREAM_COLUMNS, ContinualRun
from simulator.engine import Simulation
from simulator.metrics import JOB_COLUMNS
from tests.test_controller_scheduler import node_json, one_round
from tests.test_ctj_min_replicas import OPENS, ctj_json
from traces.canonical import NODES_FILE, read_nodes, write_nodes

CURVE = AccuracyCurve(ceiling=0.9, floor=0.3, decay_per_h=0.0, half_gain_gpu_s=50.0)
CONFIG = RetrainConfig("only", work_gpu_s=50.0)
HALF = TaskRequest(1000, 1024, 1, 500)
ROUND_S = 2.0


def node(shares: bool) -> NodeSpec:
    return NodeSpec("a", 32_000, 131_072, 1, "A100", shares_gpus=shares)


def stream(name: str) -> StreamSpec:
    return StreamSpec(
        id=name,
        start_s=1.0,
        window_s=300.0,
        windows=1,
        deadline_s=250.0,
        task=HALF,
        throughput={"A100": 1.0},
        curve=CURVE,
        configs=(CONFIG,),
        initial_accuracy=0.5,
        max_gpus=1,
    )


def windows(policy: str, shares: bool) -> dict[str, tuple[object, ...]]:
    """Each stream's (status, end, GPU-seconds)."""
    run = ContinualRun(
        [node(shares)],
        [stream("p"), stream("q")],
        make_policy(policy, {"realloc_s": ROUND_S}),
    )
    run.run()
    rows = [dict(zip(STREAM_COLUMNS, r, strict=True)) for r in run.rows]
    return {str(r["stream_id"]): (r["status"], r["end_s"], r["gpu_s"]) for r in rows}


@pytest.mark.parametrize("policy", ["thief", "edf", "fairshare"])
def test_two_half_gpu_windows_share_the_gpu_where_it_can_be_shared(policy: str) -> None:
    assert windows(policy, shares=True) == {
        "p": ("completed", 102.0, 50.0),
        "q": ("completed", 102.0, 50.0),
    }


@pytest.mark.parametrize("policy", ["thief", "edf", "fairshare"])
def test_two_half_gpu_windows_take_the_whole_gpu_in_turn_where_it_cannot(policy: str) -> None:
    assert windows(policy, shares=False) == {
        "p": ("completed", 52.0, 50.0),
        "q": ("completed", 102.0, 50.0),
    }


def test_a_share_on_an_unshared_gpu_holds_all_of_it() -> None:
    state = ClusterState([node(False)])
    state.allocate(0, (0,), 250, 1000, 1024)
    assert state.gpu_free[0].tolist() == [0]
    spec = JobSpec("second", 0.0, TaskRequest(1000, 1024, 1, 250), FixedDuration(10.0))
    with pytest.raises(PlacementError, match="needs 1000 milli-GPU on a GPU 0, only 0 free"):
        check_fits(spec, Placement((TaskPlacement("a", (0,), 250),)), state)
    state.release(0, (0,), 250, 1000, 1024)
    assert state.gpu_free[0].tolist() == [1000]
    state.allocate(0, (0,), 250, 0, 0)  # an inference share's reservation, too
    assert state.gpu_free[0].tolist() == [0]


@pytest.mark.parametrize(("shares", "ends"), [(True, [10.0, 10.0]), (False, [10.0, 20.0])])
def test_an_ordinary_policy_runs_two_quarter_gpu_jobs_side_by_side_only_where_gpus_share(
    shares: bool, ends: list[float]
) -> None:
    quarter = TaskRequest(1000, 1024, 1, 250)
    jobs = [JobSpec(f"j{i}", 0.0, quarter, FixedDuration(10.0)) for i in range(2)]
    recorder = Simulation([node(shares)], jobs, make_policy("bestfit")).run()
    rows = [dict(zip(JOB_COLUMNS, row, strict=True)) for row in recorder.jobs]
    assert sorted(row["end_s"] for row in rows) == ends


def test_a_cluster_file_says_which_nodes_do_not_share(tmp_path: Path) -> None:
    shared, whole = tmp_path / "shared.csv", tmp_path / "whole.csv"
    write_nodes([node(True)], shared)
    write_nodes([node(False), NodeSpec("b", 1000, 1024, 1, "A100")], whole)
    assert "shares_gpus" not in shared.read_text()  # files of sharing nodes stay as they were
    assert read_nodes(shared)[0].shares_gpus
    assert [n.shares_gpus for n in read_nodes(whole)] == [False, True]
    whole.write_text(whole.read_text().replace("false", "maybe"))
    with pytest.raises(ValueError, match="shares_gpus"):
        read_nodes(whole)


@pytest.mark.parametrize(("encoder", "shares"), [(WholeGpu(), False), (Hami(), True)])
def test_the_backend_tells_policies_whether_a_nodes_gpus_are_shared(
    encoder: GpuEncoder, shares: bool
) -> None:
    assert node_spec(node_from_json(node_json("a", 1)), encoder).shares_gpus is shares


@pytest.mark.parametrize(("encoder", "shares"), [(WholeGpu(), False), (Hami(), True)])
def test_a_recording_says_whether_its_nodes_gpus_were_shared(
    encoder: GpuEncoder, shares: bool, tmp_path: Path
) -> None:
    recorder = TraceRecorder(encoder, clock=lambda: 1_767_225_600.0)
    recorder.replace(NODES, [node_json("a", 1)])
    recorder.write(tmp_path)
    (recorded,) = read_nodes(tmp_path / NODES_FILE)
    assert recorded.shares_gpus is shares


# -- the controller: two CTJs of half a GPU, the same hand-worked case ---------------------


def window_pod(name: str) -> dict[str, Any]:
    body = ctj_json(1, 500, name=name, max_replicas=1, config=CONFIG)
    (manifest,) = plan(ctj_from_json(body), [], OPENS, "gpufleet").create
    meta = {**manifest["metadata"], "uid": name, "creationTimestamp": now_rfc3339(OPENS)}
    return {**manifest, "metadata": meta, "status": {"phase": "Pending"}}


def hami_node() -> dict[str, Any]:
    """One A100 as HAMi shows it: `nvidia.com/gpu` counts 10 vGPU slots."""
    node = node_json("a", 10)
    node["metadata"]["labels"]["nvidia.com/gpu.count"] = "1"
    return node


def binds_under(encoder: GpuEncoder) -> dict[str, tuple[str, str]]:
    """Pod → (GPU, milli-GPU) bound in the first round, the thief on one A100."""
    cache = ClusterCache(encoder)
    cache.replace(NODES, [hami_node() if encoder.shares_gpus else node_json("a", 1)])
    policy = make_policy("thief", {"realloc_s": ROUND_S})
    effects = one_round(cache, [window_pod(name) for name in ("p", "q")], policy, OPENS + 1)
    return {pod: (n[ASSIGNED_GPUS], n[ASSIGNED_MILLI]) for pod, _, n in effects.binds}


def test_with_a_sharing_backend_both_windows_are_bound_on_halves_of_the_gpu() -> None:
    assert binds_under(Hami()) == {"p-w0-0": ("0", "500"), "q-w0-0": ("0", "500")}


def test_with_the_whole_gpu_backend_one_window_gets_the_gpu_and_the_other_waits() -> None:
    assert binds_under(WholeGpu()) == {"p-w0-0": ("0", "1000")}


@pytest.mark.parametrize(("shares", "ends"), [(True, (101.0, 101.0)), (False, (51.0, 101.0))])
def test_an_ordinary_policy_runs_a_half_gpu_window_on_all_of_an_unshared_gpu(
    shares: bool, ends: tuple[float, float]
) -> None:
    """FIFO places each window as it opens (1 s): sharing, both run at half speed
    (50 / 0.5 s); not sharing, `p` holds the whole GPU and runs at full speed (50 s),
    as the whole-GPU backend's pod does, and `q` follows."""
    run = ContinualRun([node(shares)], [stream("p"), stream("q")], make_policy("fifo"))
    run.run()
    rows = [dict(zip(STREAM_COLUMNS, r, strict=True)) for r in run.rows]
    assert tuple(r["end_s"] for r in sorted(rows, key=lambda r: str(r["stream_id"]))) == ends
