"""`controller record`: observed arrivals, placements and ends become a canonical trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.kube.objects import (
    ASSIGNED_GPUS,
    ASSIGNED_MILLI,
    BOUND_AT,
    GPU_MILLI,
    JOB_ID,
    RESTARTS,
    RUNTIME,
    SUBMIT_TIME,
)
from controller.recorder import PAST_END_S, TraceRecorder
from controller.scheduling.cache import NODES, PODS
from controller.scheduling.encoders import Hami
from controller.scheduling.workload import DEFAULT_RUNTIME_S
from policies import FixedDuration, TaskRequest, make_policy
from simulator.engine import EngineOptions, Simulation
from simulator.metrics import JOB_COLUMNS, OCCUPANT
from traces.canonical import Pin, pin_of, read_jobs, read_nodes, recording_end

STATUS, START, PLACED = (JOB_COLUMNS.index(c) for c in ("status", "start_s", "placement"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pod(
    name: str,
    created: str,
    node: str = "",
    notes: dict[str, str] | None = None,
    scheduler: str = "gpufleet",
    phase: str = "Pending",
    gpus: int = 1,
    cpu: str = "2",
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [
            {"resources": {"requests": {"cpu": cpu, "memory": "1Gi"}, "limits": limits}}
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "uid": name,
            "name": name,
            "namespace": "default",
            "creationTimestamp": created,
            "annotations": notes or {},
        },
        "spec": spec,
        "status": {"phase": phase, **(status or {})},
    }


def test_recorded_trace_reads_back_with_observed_times(tmp_path: Path) -> None:
    clock = Clock()
    clock.now = 1767225602.0  # recording begins 2 s after a was created
    recorder = TraceRecorder(Hami(), clock=clock)  # a backend that shares GPUs
    recorder.replace(
        NODES,
        [
            {
                "metadata": {"name": "n1", "labels": {"nvidia.com/gpu.product": "T4"}},
                "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}},
            }
        ],
    )
    share = {GPU_MILLI: "500"}
    recorder.replace(PODS, [pod("a", "2026-01-01T00:00:00Z", notes=share)])
    clock.now = 1767225605.0
    # Created at 00:00:03 (whole seconds); seen at 00:00:05, which is what the trace keeps.
    recorder.apply(PODS, "ADDED", pod("b", "2026-01-01T00:00:03Z", notes={RUNTIME: "42s"}))
    recorder.apply(
        PODS, "ADDED", pod("foreign", "2026-01-01T00:00:01Z", scheduler="default-scheduler")
    )
    bound = {**share, ASSIGNED_GPUS: "1", ASSIGNED_MILLI: "500"}
    recorder.apply(
        PODS, "MODIFIED", pod("a", "2026-01-01T00:00:00Z", node="n1", notes=bound, phase="Running")
    )
    clock.now += 20
    recorder.apply(
        PODS,
        "MODIFIED",
        pod("a", "2026-01-01T00:00:00Z", node="n1", notes=bound, phase="Succeeded"),
    )
    assert recorder.write(tmp_path) == 2
    (node,) = read_nodes(tmp_path / "nodes.csv")
    assert (node.name, node.gpus, node.gpu_model, node.cpu_milli) == ("n1", 2, "T4", 8000)
    a, b = read_jobs(tmp_path / "jobs.csv")
    assert (a.id, a.submit_time, a.task, a.work) == (
        "a",
        0.0,
        TaskRequest(2000, 1024, 1, 500),
        FixedDuration(20.0),
    )
    # b never ran: it waits, with its stated runtime; the foreign pod never held anything.
    assert (b.id, b.submit_time, b.work) == ("b", 5.0, FixedDuration(42.0))
    lines = (tmp_path / "placements.csv").read_text().splitlines()
    assert lines == [
        "job_id,pod,node,gpus,gpu_milli,start_s,end_s,scheduler",
        "a,a,n1,1,500,5.0,25.0,gpufleet",
    ]
    assert recording_end(tmp_path) == 25.0


# -- occupants, the look-back and pods still waiting ------------------------------------------

T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def stamp(seconds: float) -> str:
    return f"2026-01-01T00:00:{seconds:02.0f}Z"


def gpu_node(name: str, model: str) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "4"}
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": model}},
        "status": {"allocatable": resources},
    }


def bound_by_us(gpus: str, at: float) -> dict[str, str]:
    return {ASSIGNED_GPUS: gpus, ASSIGNED_MILLI: "1000", BOUND_AT: f"{T0 + at:.3f}"}


def scheduled(at: float) -> dict[str, Any]:
    """What the API server writes when a Binding lands (whole seconds)."""
    return {
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp(at)}]
    }


def finished(at: float) -> dict[str, Any]:
    return {"containerStatuses": [{"state": {"terminated": {"finishedAt": stamp(at)}}}]}


def record_mixed_cluster(clock: Clock) -> TraceRecorder:
    """Listed at T0+100 (look-back 95 s): a foreign CPU pod bound at 1 s (before the
    look-back), a foreign pod ended at 3 s (gone from it), one of ours bound at 11 s and
    finished at 40 s, one of ours running since 21.5 s on GPUs 1,2 of n1, a foreign pod
    on n2 since 30 s, and one of ours waiting since 50 s for four GPUs. Then, live: ours
    `new` arrives (110 s), is bound to n1 GPU 0 (111 s) and succeeds (130 s); a foreign
    pod is bound to n1 (115 s); one of ours is deleted before it was bound (120-121 s)."""
    recorder = TraceRecorder(Hami(), clock=clock, lookback_s=95.0)
    clock.now = T0 + 100
    recorder.replace(NODES, [gpu_node("n1", "A100"), gpu_node("n2", "V100")])
    other = "default-scheduler"
    recorder.replace(
        PODS,
        [
            pod("ancient", stamp(0), "n2", scheduler=other, phase="Succeeded", status=finished(3)),
            pod("proxy", stamp(0), "n2", scheduler=other, gpus=0, cpu="500m", status=scheduled(1)),
            pod(
                "old-done",
                stamp(10),
                "n1",
                bound_by_us("0", 11),
                phase="Succeeded",
                status=finished(40),
            ),
            pod("early", stamp(20), "n1", bound_by_us("1,2", 21.5), gpus=2, phase="Running"),
            pod("sys", stamp(29), "n2", scheduler=other, phase="Running", status=scheduled(30)),
            pod("waiting", stamp(50), gpus=4),
        ],
    )
    events = [
        (110, "ADDED", pod("new", stamp(59))),
        (111, "MODIFIED", pod("new", stamp(59), "n1", bound_by_us("0", 111))),
        (114, "ADDED", pod("late", stamp(59), scheduler=other)),
        (115, "MODIFIED", pod("late", stamp(59), "n1", scheduler=other)),
        (120, "ADDED", pod("gone", stamp(59))),
        (121, "DELETED", pod("gone", stamp(59))),
        (130, "MODIFIED", pod("new", stamp(59), "n1", bound_by_us("0", 111), phase="Succeeded")),
    ]
    for at, event, obj in events:
        clock.now = T0 + at
        recorder.apply(PODS, event, obj)
    clock.now = T0 + 140
    return recorder


def test_other_schedulers_pods_and_the_look_back_are_occupants_and_waiting_pods_wait(
    tmp_path: Path,
) -> None:
    assert record_mixed_cluster(Clock()).write(tmp_path) == 7
    jobs = {j.id: j for j in read_jobs(tmp_path / "jobs.csv")}
    # On the trace's clock: t = 0 is T0+5, where the look-back begins.
    occupants = {
        j.id: (j.submit_time, pin_of(j), j.task.num_gpus, j.work)
        for j in jobs.values()
        if pin_of(j) is not None
    }
    assert occupants == {
        "proxy": (0.0, Pin("n2"), 0, FixedDuration(135.0 + PAST_END_S)),
        "old-done": (6.0, Pin("n1", (0,)), 1, FixedDuration(29.0)),
        "early": (16.5, Pin("n1", (1, 2)), 2, FixedDuration(135.0 - 16.5 + PAST_END_S)),
        # Another scheduler's pods hold the GPUs the controller's cache counts for them.
        "sys": (25.0, Pin("n2", (0,)), 1, FixedDuration(135.0 - 25.0 + PAST_END_S)),
        "late": (110.0, Pin("n1", (3,)), 1, FixedDuration(135.0 - 110.0 + PAST_END_S)),
    }
    waiting, new = jobs["waiting"], jobs["new"]
    assert (waiting.submit_time, waiting.task.num_gpus) == (45.0, 4)
    assert waiting.work == FixedDuration(DEFAULT_RUNTIME_S)  # never bound: it waits
    assert (new.submit_time, new.work) == (105.0, FixedDuration(19.0))
    assert list(jobs) == ["proxy", "old-done", "early", "sys", "waiting", "new", "late"]
    assert json.loads((tmp_path / "recording.json").read_text()) == {
        "began_s": 95.0,
        "ended_s": 135.0,
        "origin_unix_s": T0 + 5,
    }
    rows = (tmp_path / "placements.csv").read_text().splitlines()
    assert rows[1:] == [
        "proxy,proxy,n2,,0,0.0,,default-scheduler",
        "old-done,old-done,n1,0,1000,6.0,35.0,gpufleet",
        'early,early,n1,"1,2",1000,16.5,,gpufleet',
        "sys,sys,n2,0,1000,25.0,,default-scheduler",
        "new,new,n1,0,1000,106.0,125.0,gpufleet",
        "late,late,n1,3,1000,110.0,,default-scheduler",
    ]


def test_the_replay_of_a_recording_places_ours_as_the_cluster_did(tmp_path: Path) -> None:
    record_mixed_cluster(Clock()).write(tmp_path)
    jobs = list(read_jobs(tmp_path / "jobs.csv"))
    nodes = read_nodes(tmp_path / "nodes.csv")
    options = EngineOptions(horizon_s=recording_end(tmp_path) or 0.0)
    rows = Simulation(nodes, jobs, make_policy("bestfit"), options).run().jobs
    got = {r[0]: (r[STATUS], r[START], r[PLACED]) for r in rows}
    assert got["new"] == ("completed", 105.0, "n1:0")
    assert got["waiting"] == ("unfinished", None, "")
    assert got["late"] == (OCCUPANT, 110.0, "n1:3")
    assert got["sys"] == (OCCUPANT, 25.0, "n2:0")
    # Without its occupants the replay would have placed the waiting job at once.
    free = [j for j in jobs if pin_of(j) is None]
    rows = Simulation(nodes, free, make_policy("bestfit"), options).run().jobs
    assert {r[0]: r[START] for r in rows}["waiting"] == 45.0


def test_a_pod_seen_bound_after_a_watch_gap_is_an_occupant_and_ids_stay_unique(
    tmp_path: Path,
) -> None:
    clock = Clock()
    recorder = TraceRecorder(Hami(), clock=clock)
    clock.now = T0 + 10
    recorder.replace(NODES, [gpu_node("n1", "A100")])
    recorder.replace(PODS, [])
    clock.now = T0 + 20
    recorder.apply(PODS, "ADDED", pod("x", stamp(15)))
    clock.now = T0 + 22
    recorder.apply(PODS, "MODIFIED", pod("x", stamp(15), "n1", bound_by_us("0", 22)))
    # A relist after a gap: x has gone, another x (same name) was bound meanwhile.
    clock.now = T0 + 30
    again = pod("x", stamp(25), "n1", bound_by_us("2", 26), phase="Running")
    again["metadata"]["uid"] = "x-2"
    recorder.replace(PODS, [again])
    clock.now = T0 + 40
    recorder.write(tmp_path)
    jobs = list(read_jobs(tmp_path / "jobs.csv"))
    assert [(j.id, j.submit_time, j.work, pin_of(j)) for j in jobs] == [
        ("x", 10.0, FixedDuration(8.0), None),
        ("x~2", 16.0, FixedDuration(30.0 - 16.0 + PAST_END_S), Pin("n1", (2,))),
    ]


def test_a_job_the_controller_evicted_and_recreated_is_one_job_run_for_its_total(
    tmp_path: Path,
) -> None:
    clock = Clock()
    recorder = TraceRecorder(Hami(), clock=clock)
    clock.now = T0
    recorder.replace(NODES, [gpu_node("n1", "A100")])
    recorder.replace(PODS, [])
    copy = {JOB_ID: "default/x", RESTARTS: "1", SUBMIT_TIME: f"{T0 + 1:.3f}"}
    events = [
        (1, "ADDED", pod("x", stamp(1))),
        (2, "MODIFIED", pod("x", stamp(1), "n1", bound_by_us("0", 2))),
        (12, "DELETED", pod("x", stamp(1), "n1", bound_by_us("0", 2))),  # preempted
        (12.5, "ADDED", pod("x-r1", stamp(12), notes=copy)),
        (20, "MODIFIED", pod("x-r1", stamp(12), "n1", {**copy, **bound_by_us("3", 20)})),
    ]
    for at, event, obj in events:
        clock.now = T0 + at
        recorder.apply(PODS, event, obj)
    clock.now = T0 + 30
    recorder.write(tmp_path)
    (job,) = read_jobs(tmp_path / "jobs.csv")
    # 10 s, then 10 s more and still running at the end: it runs past the end.
    assert (job.id, job.submit_time, job.replicas) == ("x", 1.0, 1)
    assert job.work == FixedDuration(20.0 + PAST_END_S)
    rows = (tmp_path / "placements.csv").read_text().splitlines()[1:]
    assert rows == ["x,x,n1,0,1000,2.0,12.0,gpufleet", "x,x-r1,n1,3,1000,20.0,,gpufleet"]
