"""Inference shares: serving quality, delivered accuracy and the thief's split, by hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from policies import ClusterState, NodeSpec, Snapshot, TaskRequest, make_policy
from policies.accuracy_aware import ThiefAllocator
from policies.continual import (
    AccuracyCurve,
    RetrainConfig,
    Serving,
    StreamSpec,
    WindowOpening,
    split_inference,
)
from policies.fifo import FifoFirstFit
from simulator.continual import STREAM_COLUMNS, ContinualRun

A100 = NodeSpec("a100-0", cpu_milli=8000, mem_mib=8000, gpus=1, gpu_model="a100")
COL = {name: i for i, name in enumerate(STREAM_COLUMNS)}


def stream(sid: str, start_acc: float, work: float, milli: int, gamma: float) -> StreamSpec:
    return StreamSpec(
        id=sid,
        start_s=0.0,
        window_s=600.0,
        windows=1,
        deadline_s=600.0,
        task=TaskRequest(1000, 1000, 1, 1000),
        throughput={"a100": 1.0},
        curve=AccuracyCurve(0.9, 0.5, 0.0, half_gain_gpu_s=work),
        configs=(RetrainConfig("only", work, 1.0),),
        initial_accuracy=start_acc,
        restart_cost_s=0.0,
        inference_milli=milli,
        inference_gamma=gamma,
    )


def test_serving_quality_curve() -> None:
    spec = stream("s", 0.9, 100, milli=400, gamma=0.5)
    assert spec.serving_quality(400) == 1.0
    assert spec.serving_quality(100) == pytest.approx(0.5)  # (1/4)^½
    assert spec.serving_quality(0) == 0.0
    assert stream("t", 0.9, 100, milli=0, gamma=0.5).serving_quality(0) == 1.0


class QuarterInference(FifoFirstFit):
    """FIFO that grants every stream a quarter of its inference demand."""

    def plan_inference(
        self, serving: Sequence[Serving], openings: Sequence[WindowOpening], snapshot: Snapshot
    ) -> list[int]:
        return [item.stream.inference_milli // 4 for item in serving]


def test_delivered_accuracy_with_a_quarter_of_the_inference_demand() -> None:
    # At its ceiling without decay, so no retraining: only serving matters.
    spec = stream("s", 0.9, 100, milli=400, gamma=0.5)
    run = ContinualRun([A100], [spec], QuarterInference())
    run.run()
    summary = run.summary()
    # 100 of 400 milli-GPU: quality (1/4)^½ = ½ of the model's 0.9.
    assert summary["mean_model_accuracy"] == pytest.approx(0.9)
    assert summary["mean_accuracy"] == pytest.approx(0.45)
    assert summary["inference_grant_share"] == pytest.approx(0.25)
    assert run.sim.cluster.state.gpu_free[0, 0] == 1000  # freed when the stream ended


def test_full_inference_is_reserved_before_retraining() -> None:
    # FIFO's window job asks for a whole GPU; with 400 milli-GPU reserved for inference
    # on the only GPU it cannot start and expires: the stale 0.5 is served at quality 1.
    spec = stream("s", 0.5, 100, milli=400, gamma=0.5)
    run = ContinualRun([A100], [spec], make_policy("fifo"))
    run.run()
    (row,) = run.rows
    assert row[COL["status"]] == "expired"
    assert run.summary()["mean_accuracy"] == pytest.approx(0.5)
    assert run.summary()["inference_grant_share"] == 1.0


def test_thief_splits_inference_and_retraining_on_two_streams() -> None:
    """Two A100s, window 600 s, no decay. a: 0.5 → 0.9, 300 s of work closing half the
    gap (G = 0.2), inference 1000 milli with γ = 0.05; b: 0.7, 60 s of work (G = 0.1),
    inference 1000 milli with γ = 0.5. Each retrains on at most one GPU.

    Fluid plan, all free (rate 2): b first (work per gain 600 < 1500), done at 60 (its
    one-GPU limit) → 0.1·540 = 54; a done at 300 → 0.2·300 = 60; 114 in all. If
    inference took its whole 2000 milli (2 A100-s per s) retraining would get nothing,
    so the price is 114 / 2000 = 0.057 accuracy-seconds per milli-GPU.
    M (stale + own uplift): a 0.5·600 + 60 = 360, b 0.7·600 + 54 = 474.
    a: s·360 − 0.057·x for x = 250, 500, 750, 1000 with s = (x/1000)^0.05
       = 0.93303·360 − 14.25 = 321.64; 0.96593·360 − 28.5 = 319.23;
         0.98572·360 − 42.75 = 312.11; 360 − 57 = 303 → 250.
    b: s = (x/1000)^0.5: 1000 → 474 − 57 = 417; 750 → 0.86603·474 − 42.75 = 367.75 → 1000.
    """
    streams = [stream("a", 0.5, 300.0, 1000, 0.05), stream("b", 0.7, 60.0, 1000, 0.5)]
    nodes = [A100, NodeSpec("a100-1", 8000, 8000, gpus=1, gpu_model="a100")]
    snapshot = Snapshot(ClusterState(nodes).view(), [], [], 0.0)
    serving = [Serving(s, s.start_accuracy) for s in streams]
    openings = [WindowOpening(s, 0, s.start_accuracy) for s in streams]
    assert ThiefAllocator().plan_inference(serving, openings, snapshot) == [250, 1000]
    assert split_inference(serving, [360.0, 474.0], 0.057) == [250, 1000]


def test_thief_grants_full_inference_when_retraining_gains_nothing() -> None:
    spec = stream("s", 0.9, 100, milli=400, gamma=0.5)  # at its ceiling
    snapshot = Snapshot(ClusterState([A100]).view(), [], [], 0.0)
    serving = [Serving(spec, 0.9)]
    opening = [WindowOpening(spec, 0, 0.9)]
    assert ThiefAllocator().plan_inference(serving, opening, snapshot) == [400]


def test_thief_run_delivers_more_than_its_model_alone_would_with_no_inference() -> None:
    streams = [stream("a", 0.5, 300.0, 1000, 0.05), stream("b", 0.7, 60.0, 1000, 0.5)]
    nodes = [A100, NodeSpec("a100-1", 8000, 8000, gpus=1, gpu_model="a100")]
    thief = ContinualRun(nodes, streams, make_policy("thief"))
    thief.run()
    fifo = ContinualRun(nodes, streams, make_policy("fifo"))
    fifo.run()
    assert np.isclose(fifo.summary()["inference_grant_share"], 1.0)
    assert thief.summary()["inference_grant_share"] == pytest.approx((0.25 + 1.0) / 2)
    assert thief.summary()["mean_accuracy"] > fifo.summary()["mean_accuracy"]


def test_a_streams_share_is_freed_when_its_last_window_ends() -> None:
    # `short` serves with the whole only GPU for its one window (0-600 s), at its
    # ceiling; `late` opens at 600 s and needs the GPU to retrain: it gets it.
    short = stream("short", 0.9, 100, milli=1000, gamma=0.5)
    late = replace(stream("late", 0.5, 100, milli=0, gamma=0.5), start_s=600.0)
    run = ContinualRun([A100], [short, late], make_policy("fifo"))
    run.run()
    status = {r[COL["stream_id"]]: r[COL["status"]] for r in run.rows}
    assert status == {"short": "none", "late": "completed"}
    assert run.summary()["inference_grant_share"] == pytest.approx(1.0)
