"""Engine support for auxiliary parts: their own resources, a shape without them, and the
slowdown they charge to the jobs whose GPU they share (hand-worked timings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from policies import (
    AllocationShape,
    Context,
    JobSpec,
    PartShape,
    Place,
    Placement,
    Policy,
    SchedulingResult,
    Snapshot,
    TaskPlacement,
    TaskRequest,
)
from simulator.colocation import Colocation
from simulator.engine import Simulation
from simulator.state import JobRun
from tests.conftest import job, job_rows, node


@dataclass(frozen=True)
class GuestWork:
    """Runs `seconds` at rate 1; a part of it slows hosts by `slowdown`."""

    seconds: float
    slowdown: float

    @property
    def total(self) -> float:
        return self.seconds

    def rate(self, shape: AllocationShape, done: float) -> float:
        return 1.0

    def host_slowdown(self, part: PartShape) -> float:
        return self.slowdown


class Scripted(Policy):
    """Places each pending job on the placement given for it."""

    def __init__(self, placements: dict[str, Placement]) -> None:
        super().__init__()
        self.placements = placements

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        decisions = tuple(
            Place(view.id, self.placements[view.id], "scripted") for view in snapshot.pending
        )
        return SchedulingResult(decisions)


PART_REQUEST = TaskRequest(cpu_milli=3000, mem_mib=100, num_gpus=1, gpu_milli=200)


def guest(
    job_id: str, seconds: float, slowdown: float, submit: float = 0.0, milli: int = 1000
) -> JobSpec:
    return JobSpec(
        id=job_id,
        submit_time=submit,
        task=TaskRequest(cpu_milli=1000, num_gpus=1, gpu_milli=milli),
        work=GuestWork(seconds, slowdown),
    )


def guest_placement(host_gpu: int = 0) -> Placement:
    return Placement(
        (
            TaskPlacement("n0", (1,), 1000),
            TaskPlacement("n0", (host_gpu,), 200, part="preprocess", request=PART_REQUEST),
        )
    )


def run(jobs: list[JobSpec], placements: dict[str, Placement]) -> dict[str, dict[str, Any]]:
    sim = Simulation([node("n0", gpus=2)], jobs, Scripted(placements))
    return job_rows(sim.run())


def test_host_slows_while_the_part_is_there_and_recovers_after() -> None:
    # Host: 100 s of work on GPU 0 (500 milli). Guest part on GPU 0 from t=0 to t=50
    # at 20 % slowdown: the host does 0.8·50 = 40 s of work by t=50, then 60 s at full
    # speed, so it ends at 110 s.
    host = job("host", milli=500, duration=100.0)
    rows = run(
        [host, guest("guest", 50.0, 0.2)],
        {"host": Placement((TaskPlacement("n0", (0,), 500),)), "guest": guest_placement()},
    )
    assert rows["guest"]["end_s"] == pytest.approx(50.0)
    assert rows["host"]["end_s"] == pytest.approx(110.0)


def test_a_part_arriving_later_slows_only_from_then_on() -> None:
    # The guest arrives at t=40 and stays past the host's end: the host does 40 s, then
    # 60 s of work at 0.5 speed (120 s): it ends at 160 s.
    host = job("host", milli=500, duration=100.0)
    rows = run(
        [host, guest("guest", 500.0, 0.5, submit=40.0)],
        {"host": Placement((TaskPlacement("n0", (0,), 500),)), "guest": guest_placement()},
    )
    assert rows["host"]["end_s"] == pytest.approx(160.0)


def test_a_part_on_another_gpu_does_not_slow_the_job() -> None:
    host = job("host", milli=500, duration=100.0)
    rows = run(
        [host, guest("guest", 50.0, 0.5, milli=400)],
        {
            "host": Placement((TaskPlacement("n0", (0,), 500),)),
            "guest": Placement(
                (
                    TaskPlacement("n0", (0,), 400),
                    TaskPlacement("n0", (1,), 200, part="preprocess", request=PART_REQUEST),
                )
            ),
        },
    )
    assert rows["host"]["end_s"] == pytest.approx(100.0)


def test_part_takes_its_own_request_and_is_left_out_of_the_shape() -> None:
    sim = Simulation([node("n0", gpus=2)], [], Scripted({}))
    placement = guest_placement()
    running = JobRun(spec=guest("g", 10.0, 0.1), seq=0, placement=placement)
    sim.cluster.bind(running, placement)
    state = sim.cluster.state
    assert state.cpu_free[0] == 64_000 - 1000 - PART_REQUEST.cpu_milli
    assert list(state.gpu_free[0, :2]) == [800, 0]
    sim.cluster.unbind(running)
    assert state.cpu_free[0] == 64_000 and list(state.gpu_free[0, :2]) == [1000, 1000]
    shape = sim.cluster.shape_of(Placement(placement.tasks, mode="rap"))
    assert (shape.num_gpus, shape.replicas, shape.mode) == (1, 1, "rap")
    assert shape.parts == (PartShape("preprocess", 3000, 200),)


def test_speed_factor_is_the_slowest_gpus_product_of_foreign_parts() -> None:
    colocation = Colocation()
    host = job("host", gpus=2, duration=10.0)
    colocation.add(host, Placement((TaskPlacement("n", (0, 1), 1000),)))
    for name, gpu, slowdown in (("a", 0, 0.1), ("b", 0, 0.2), ("c", 1, 0.25)):
        part = TaskPlacement("n", (gpu,), 100, part="p", request=PART_REQUEST)
        colocation.add(guest(name, 1.0, slowdown), Placement((part,)))
    placement = Placement((TaskPlacement("n", (0, 1), 1000),))
    # GPU 0 keeps 0.9·0.8 = 0.72, GPU 1 keeps 0.75: the job runs at 0.72.
    assert colocation.speed_factor("host", placement) == pytest.approx(0.72)
    assert colocation.take_disturbed() == {"host"}
    assert colocation.take_disturbed() == set()
