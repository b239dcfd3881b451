"""Occupants: trace rows pinned to a node (`node`, `gpus` columns), which the simulator
places itself and no policy sees; and `simulate --trace DIR` on a trace directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gpufleet.cli import main
from policies import JobSpec, ModelThroughput, make_policy
from simulator.engine import EngineOptions, Simulation
from simulator.metrics import JOB_COLUMNS, OCCUPANT
from tests.conftest import job, node
from traces import TraceError, load_jobs
from traces.canonical import (
    JOB_COLUMNS as TRACE_COLUMNS,
)
from traces.canonical import (
    PIN_KEY,
    Pin,
    pin_of,
    read_jobs,
    write_jobs,
    write_nodes,
)

STATUS = JOB_COLUMNS.index("status")
PLACED = JOB_COLUMNS.index("placement")
START = JOB_COLUMNS.index("start_s")
END = JOB_COLUMNS.index("end_s")


def pinned(spec: JobSpec, node_name: str, gpus: tuple[int, ...] | None = None) -> JobSpec:
    return dataclasses.replace(spec, attributes={PIN_KEY: Pin(node_name, gpus)})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- schema -------------------------------------------------------------------------------


def test_occupants_round_trip_and_other_traces_keep_their_columns(tmp_path: Path) -> None:
    jobs = [
        pinned(job("sys", gpus=2, submit=1.0), "n0", (2, 3)),
        pinned(job("cpu", gpus=0), "n1"),
        job("plain", submit=2.0),
    ]
    write_jobs(jobs, tmp_path / "jobs.csv")
    header = (tmp_path / "jobs.csv").read_text().splitlines()[0]
    assert header == ",".join((*TRACE_COLUMNS, "node", "gpus"))
    back = list(read_jobs(tmp_path / "jobs.csv"))
    assert [pin_of(j) for j in back] == [Pin("n0", (2, 3)), Pin("n1"), None]
    assert back == jobs
    write_jobs([job("plain")], tmp_path / "plain.csv")
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == ",".join(TRACE_COLUMNS)


@pytest.mark.parametrize(
    ("row", "field", "why"),
    [
        ("a,0,1,1,100,,1", "gpus", "need a node"),
        ("a,0,2,1,100,n0,", "replicas", "one task"),
        ("a,0,1,1,,n0,", "duration_s", "needs a duration"),
        ("a,0,1,1,100,n0,0|1", "gpus", "not 1 distinct GPU indices"),
        ("a,0,1,2,100,n0,1|1", "gpus", "not 2 distinct"),
        ("a,0,1,1,100,n0,x", "gpus", "GPU indices"),
        ("a,0,1,1,100,n0,-1", "gpus", "GPU indices"),
    ],
)
def test_bad_occupant_rows_name_line_and_field(
    tmp_path: Path, row: str, field: str, why: str
) -> None:
    header = "id,submit_s,replicas,num_gpus,duration_s,node,gpus\n"
    path = write(tmp_path, "jobs.csv", header + "ok,0,1,1,100,,\n" + row + "\n")
    with pytest.raises(TraceError, match=why) as info:
        load_jobs(path)
    assert (info.value.line, info.value.field) == (3, field)


def test_an_occupant_without_a_csv_form_is_refused(tmp_path: Path) -> None:
    spec = dataclasses.replace(pinned(job("a"), "n0"), work=ModelThroughput(10.0, {"V100": 1.0}))
    with pytest.raises(TraceError, match="job a: an occupant needs one task and a duration"):
        write_jobs([spec], tmp_path / "jobs.csv")


# -- simulator -----------------------------------------------------------------------------


def run(jobs: list[JobSpec], policy: str = "bestfit") -> dict[str, tuple[object, ...]]:
    nodes = [node("n0", gpus=4), node("n1", gpus=4)]
    recorder = Simulation(nodes, jobs, make_policy(policy)).run()
    return {str(row[0]): row for row in recorder.jobs}


@pytest.mark.parametrize(
    ("policy", "start"), [("bestfit", 50.0), ("fifo", 50.0), ("las", 50.0), ("gavel", 360.0)]
)
def test_a_job_waits_for_the_gpus_an_occupant_holds_and_takes_them_when_it_leaves(
    policy: str, start: float
) -> None:
    rows = run(
        [
            pinned(job("sys-0", gpus=4, duration=50.0), "n0", (0, 1, 2, 3)),
            pinned(job("sys-1", gpus=2, duration=80.0), "n1"),
            job("big", gpus=4, submit=10.0, duration=10.0),
        ],
        policy,
    )
    assert rows["sys-0"][STATUS] == rows["sys-1"][STATUS] == OCCUPANT
    assert (rows["sys-0"][PLACED], rows["sys-0"][END]) == ("n0:0+1+2+3", 50.0)
    assert rows["sys-1"][PLACED] == "n1:0+1"  # no GPUs recorded: the lowest free ones
    assert rows["big"][STATUS] == "completed"
    # Not at 10: every GPU it could use was held (Gavel places in 360 s rounds).
    assert rows["big"][START] == start
    assert rows["big"][PLACED] == "n0:0+1+2+3"


def test_an_occupant_whose_recorded_gpus_are_taken_holds_others_or_cpu_only() -> None:
    rows = run(
        [
            job("first", gpus=3, duration=100.0, cpu=60_000),
            pinned(job("moved", gpus=1, submit=1.0), "n0", (0,)),
            pinned(job("cpu-only", gpus=2, submit=2.0), "n0", (1, 2)),
            pinned(job("uncounted", gpus=0, cpu=10_000, submit=3.0), "n0"),
        ]
    )
    assert rows["first"][PLACED] == "n0:0+1+2"
    assert rows["moved"][PLACED] == "n0:3"  # GPU 0 is taken: the controller's choice
    assert rows["cpu-only"][PLACED] == "n0:"  # no two GPUs free: CPU and memory only
    assert rows["uncounted"][PLACED] == ""  # not even the CPU fits: not counted
    assert {rows[n][STATUS] for n in ("moved", "cpu-only", "uncounted")} == {OCCUPANT}


def test_occupants_are_not_jobs_to_policies_or_in_the_summary() -> None:
    nodes = [node("n0", gpus=4), node("n1", gpus=4)]
    jobs = [
        pinned(job("sys", gpus=2, duration=500.0), "n1"),
        job("a", submit=1.0, duration=10.0),
    ]
    sim = Simulation(nodes, jobs, make_policy("las"), EngineOptions(horizon_s=100.0))
    summary = sim.run().summary()
    assert (summary["jobs"], summary["completed"], summary["unfinished"]) == (1, 1, 0)
    assert summary["avg_queue_delay_s"] == 0.0
    assert sim.occupants.keys() == {"sys"}
    assert sim.cluster.state.gpu_free[1].tolist() == [0, 0, 1000, 1000]


@pytest.mark.parametrize(
    ("pin", "why"),
    [
        (Pin("elsewhere"), "job x: pinned to node 'elsewhere', not in the cluster"),
        (Pin("n0", (7,)), "job x: node n0 has no GPU 7"),
    ],
)
def test_a_pin_the_cluster_cannot_hold_is_refused_before_the_run(pin: Pin, why: str) -> None:
    spec = dataclasses.replace(job("x"), attributes={PIN_KEY: pin})  # as a reader would
    with pytest.raises(ValueError, match=why):
        run([spec])


def test_a_pinned_job_needs_a_fixed_duration() -> None:
    spec = dataclasses.replace(pinned(job("x"), "n0"), work=ModelThroughput(5.0, {}))
    with pytest.raises(ValueError, match="job x: an occupant needs one task and a fixed"):
        run([spec])
    with pytest.raises(ValueError, match="job g: an occupant needs one task"):
        run([pinned(job("g", replicas=2), "n0")])


# -- simulate --trace DIR ------------------------------------------------------------------


def test_simulate_reads_a_trace_directory_and_stops_at_its_recording_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "observed"
    trace.mkdir()
    write_nodes([node("n0", gpus=4)], trace / "nodes.csv")
    write_jobs(
        [
            pinned(job("sys", gpus=4, duration=1000.0), "n0"),
            job("waits", gpus=2, submit=5.0),
            job("done", gpus=0, submit=1.0, duration=3.0),
        ],
        trace / "jobs.csv",
    )
    (trace / "recording.json").write_text('{"began_s": 0, "ended_s": 60.0, "origin_unix_s": 1}')
    out = tmp_path / "run"
    assert main(["simulate", "--trace", str(trace), "--policy", "bestfit", "--out", str(out)]) == 0
    summary = (out / "summary.json").read_text()
    assert '"jobs": 2' in summary and '"completed": 1' in summary and '"unfinished": 1' in summary
    assert '"horizon_s": 60.0' in (out / "config.json").read_text()
    capsys.readouterr()
    # --horizon overrides the recording's end: the occupant leaves, the waiting job runs.
    again = tmp_path / "longer"
    args = ["simulate", "--trace", str(trace), "--horizon", "2000", "--out", str(again)]
    assert main(args) == 0
    assert '"completed": 2' in (again / "summary.json").read_text()


@pytest.mark.parametrize(
    ("files", "extra", "missing"),
    [
        ((), (), "no jobs.csv or nodes.csv in this directory"),
        (("jobs.csv",), (), "no nodes.csv in this directory"),
        (("nodes.csv",), ("--gpus", "8"), "no jobs.csv in this directory"),
    ],
)
def test_simulate_names_what_a_trace_directory_lacks(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: tuple[str, ...],
    extra: tuple[str, ...],
    missing: str,
) -> None:
    trace = tmp_path / "observed"
    trace.mkdir()
    for name in files:
        (trace / name).write_text("id\n")
    out = tmp_path / "run"
    assert main(["simulate", "--trace", str(trace), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{trace}: {missing}" in err and "controller record" in err
    assert not out.exists()


def test_a_bad_recording_end_names_its_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "observed"
    trace.mkdir()
    write_nodes([node("n0")], trace / "nodes.csv")
    write_jobs([job("a")], trace / "jobs.csv")
    (trace / "recording.json").write_text('{"ended_s": "soon"}')
    assert main(["simulate", "--trace", str(trace), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{trace / 'recording.json'}: field 'ended_s': expected a number, got 'soon'" in err
