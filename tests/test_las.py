"""Least-attained-service: queue demotion, preemption and the wake-up for the next crossing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from policies import (
    ClusterState,
    Context,
    JobStatus,
    JobView,
    Place,
    Placement,
    Preempt,
    Snapshot,
    TaskPlacement,
    make_policy,
)
from tests.conftest import job, node


def running(spec, gpus, attained: float, now: float) -> JobView:
    placement = Placement((TaskPlacement("n0", tuple(range(gpus)), 1000),))
    return JobView(
        spec=spec,
        status=JobStatus.RUNNING,
        placement=placement,
        attained_gpu_s=attained,
        service_since=now,
    )


def test_new_job_preempts_a_job_that_has_had_more_service() -> None:
    state = ClusterState([node("n0", 4)])
    old = job("old", gpus=4)
    state.allocate(0, (0, 1, 2, 3), 1000, old.task.cpu_milli, old.task.mem_mib)
    new = job("new", gpus=2, submit=100.0)
    snapshot = Snapshot(
        cluster=state.view(),
        running=[running(old, 4, attained=4000.0, now=100.0)],
        pending=[JobView(spec=new, status=JobStatus.PENDING)],
        now=100.0,
    )
    result = make_policy("las").schedule(snapshot, Context(np.random.default_rng(0)))
    kinds = [(type(d), d.job_id) for d in result.decisions]
    assert kinds == [(Preempt, "old"), (Place, "new")]
    # "new" gains 2 GPU-s per s and crosses the 3600 GPU-s threshold after 1800 s.
    assert result.wake_at == pytest.approx(100.0 + 1800.0)


def test_same_queue_keeps_fifo_order_and_does_not_preempt() -> None:
    state = ClusterState([node("n0", 4)])
    first = job("first", gpus=4)
    state.allocate(0, (0, 1, 2, 3), 1000, first.task.cpu_milli, first.task.mem_mib)
    later = job("later", gpus=2, submit=50.0)
    snapshot = Snapshot(
        cluster=state.view(),
        running=[running(first, 4, attained=100.0, now=60.0)],
        pending=[JobView(spec=later, status=JobStatus.PENDING)],
        now=60.0,
    )
    result = make_policy("las").schedule(snapshot, Context(np.random.default_rng(0)))
    assert not any(isinstance(d, Preempt) for d in result.decisions)
    # The running job crosses 3600 GPU-s at 60 + (3600 − 100) / 4.
    assert result.wake_at == pytest.approx(60.0 + 3500.0 / 4)


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="ascending"):
        make_policy("las", {"thresholds_gpu_s": "100,10"})
    with pytest.raises(ValueError, match="placement policy"):
        make_policy("las", {"placement": "las"})


def test_a_job_that_may_not_be_preempted_keeps_its_gpus() -> None:
    # As the first test, but "old" may not be preempted: it keeps all four GPUs, so
    # "new" (2 GPUs) is not admitted and nothing is placed over it.
    state = ClusterState([node("n0", 4)])
    old = dataclasses.replace(job("old", gpus=4), preemptible=False)
    state.allocate(0, (0, 1, 2, 3), 1000, old.task.cpu_milli, old.task.mem_mib)
    snapshot = Snapshot(
        cluster=state.view(),
        running=[running(old, 4, attained=4000.0, now=100.0)],
        pending=[JobView(spec=job("new", gpus=2, submit=100.0), status=JobStatus.PENDING)],
        now=100.0,
    )
    result = make_policy("las").schedule(snapshot, Context(np.random.default_rng(0)))
    assert not result.of_type(Preempt) and not result.of_type(Place)
