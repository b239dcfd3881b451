"""`gpufleet whatif` offline: hand-worked forecasts from small snapshots, each source of
remaining time, sampling, deadline misses, the outputs, and malformed snapshots."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpufleet.cli import main
from simulator.whatif.forecast import PolicySpec, plan_forecast, run_samples
from simulator.whatif.remaining import RemainingTimes, Source
from simulator.whatif.report import NEVER_FITS, PolicyForecast, combine, prediction_rows
from traces.errors import TraceError
from traces.snapshot import (
    ClusterSnapshot,
    Shape,
    SnapCtj,
    SnapHistory,
    SnapNode,
    SnapPending,
    SnapRunning,
    SnapWindow,
    snapshot_from_json,
    write_snapshot,
)

NODE = SnapNode("n0", 8000, 32_000, 2, "A100")


def forecast(
    snapshot: ClusterSnapshot, policy: str = "fifo", samples: int = 1, horizon: float = 1e4
) -> dict[str, dict[str, Any]]:
    plan = plan_forecast(snapshot, horizon)
    runs = run_samples(plan, [PolicySpec(policy, {})], samples, seed=3, workers=1)
    return {row["job_id"]: row for row in prediction_rows(plan, combine(runs, samples))}


def pending(job_id: str, gpus: int = 1, runtime: float | None = None, **kw: Any) -> SnapPending:
    return SnapPending(
        job_id, kw.pop("age_s", 0.0), 1000, 1000, gpus, 1000, runtime_s=runtime, **kw
    )


def test_declared_runtimes_give_a_hand_worked_forecast() -> None:
    """Node of 2 GPUs, both held by a pod that declared 100 s and has run 40 s. FIFO: at
    60 the 1-GPU job (50 s) starts; the 2-GPU job (10 s) must wait for it: 110 → 120.
    Queue order is age order (older first), whatever the file order."""
    snapshot = ClusterSnapshot(
        0.0,
        (NODE,),
        running=(SnapRunning("r", "n0", 1000, 1000, 2, 1000, 40.0, (0, 1), runtime_s=100.0),),
        pending=(pending("two", 2, 10.0, age_s=5.0), pending("one", 1, 50.0, age_s=9.0)),
    )
    rows = forecast(snapshot)
    assert (rows["one"]["start_p50_s"], rows["one"]["finish_p50_s"]) == (60.0, 110.0)
    assert (rows["two"]["start_p50_s"], rows["two"]["finish_p50_s"]) == (110.0, 120.0)
    assert {row["source"] for row in rows.values()} == {"declared"}
    assert "r" not in rows  # a running pod is an occupant, not a forecast job


@pytest.mark.parametrize(("policy", "start"), [("fifo", 0.0), ("sia", 20.0), ("gavel", 260.0)])
def test_round_based_policies_decide_on_the_live_controllers_grid(
    policy: str, start: float
) -> None:
    """The controller's rounds fall on the Unix clock's multiples of the policy's round.
    A snapshot taken at Unix 1,800,000,100 s is 40 s past a multiple of Sia's 60 s and
    100 s past one of Gavel's 360 s, so a job waiting on an idle GPU starts at the next
    round, 20 s and 260 s later; FIFO decides on the arrival itself."""
    snapshot = ClusterSnapshot(1_800_000_100.0, (NODE,), pending=(pending("one", 1, 50.0),))
    rows = forecast(snapshot, policy)
    assert (rows["one"]["start_p50_s"], rows["one"]["finish_p50_s"]) == (start, start + 50.0)


def test_each_source_in_its_order() -> None:
    snapshot = ClusterSnapshot(
        0.0,
        (NODE,),
        ctjs=(SnapCtj("stream", 1, 1000, 1000, 1, 1000, completed_window_s=(300.0, 500.0)),),
        history=(SnapHistory(1, 1, 1000, 100.0), SnapHistory(1, 1, 1000, 400.0)),
        default_runtime_s=900.0,
    )
    times = RemainingTimes(snapshot)
    one_gpu = Shape(1, 1, 1000)
    declared = times.estimate(one_gpu, 70.0, "stream", elapsed=20.0)
    assert (declared.source, declared.fixed) == (Source.DECLARED, 50.0)
    ctj = times.estimate(one_gpu, None, "stream", elapsed=350.0)
    assert (ctj.source, ctj.draws, ctj.fixed) == (Source.CTJ_HISTORY, (), 150.0)
    # Past every completed window: the shape's history, conditioned on the elapsed time.
    shape = times.estimate(one_gpu, None, "stream", elapsed=350.0 + 200)
    assert shape.source == Source.DEFAULT  # 550 s outlived the shape's 100 and 400 s too
    assert times.estimate(one_gpu, None, "", elapsed=50.0).draws == (50.0, 350.0)
    other_shape = times.estimate(Shape(1, 2, 1000), None, "", elapsed=0.0)
    assert (other_shape.source, other_shape.fixed) == (Source.DEFAULT, 900.0)
    overdue = times.estimate(Shape(1, 2, 1000), None, "", elapsed=1000.0)
    assert overdue.fixed == 900.0  # past the default: the default once more


def test_declared_runtimes_are_calibrated_by_how_much_finished_jobs_overran() -> None:
    """Finished jobs that declared 10, 20 and 30 s ran 12, 21 and 35 s: the median
    overrun, 2 s, is added to every declared runtime; jobs without a declared runtime
    do not count, and an early finish never shortens a declaration."""
    history = (
        SnapHistory(1, 1, 1000, 12.0, 10.0),
        SnapHistory(1, 1, 1000, 21.0, 20.0),
        SnapHistory(1, 1, 1000, 35.0, 30.0),
        SnapHistory(1, 1, 1000, 500.0),
    )
    times = RemainingTimes(ClusterSnapshot(0.0, (NODE,), history=history))
    assert times.estimate(Shape(1, 1, 1000), 100.0, elapsed=40.0).fixed == 62.0
    early = (SnapHistory(1, 1, 1000, 5.0, 10.0),)
    times = RemainingTimes(ClusterSnapshot(0.0, (NODE,), history=early))
    assert times.estimate(Shape(1, 1, 1000), 100.0).fixed == 100.0


def test_a_declared_pod_past_its_runtime_finishes_now() -> None:
    times = RemainingTimes(ClusterSnapshot(0.0, (NODE,)))
    late = times.estimate(Shape(1, 1, 1000), 30.0, elapsed=45.0)
    assert late.source == Source.DECLARED and 0 < late.fixed < 0.01  # type: ignore[operator]


def test_shape_history_samples_bracket_the_p50_and_p90() -> None:
    """One 1-GPU node, a job of unknown runtime ahead of another: the second starts when
    the first ends, a draw of {100, 200, 300, 400}. Over 40 seeded samples p50 <= p90,
    both among the drawn values, and the same seed gives the same answer."""
    history = tuple(SnapHistory(1, 1, 1000, d) for d in (100.0, 200.0, 300.0, 400.0))
    snapshot = ClusterSnapshot(
        0.0,
        (SnapNode("n0", 8000, 32_000, 1, "A100"),),
        pending=(pending("a", age_s=2.0), pending("b", age_s=1.0)),
        history=history,
    )
    rows = forecast(snapshot, samples=40)
    b = rows["b"]
    assert b["source"] == "shape-history"
    assert b["start_p50_s"] in (100.0, 200.0, 300.0, 400.0)
    assert b["start_p50_s"] <= b["start_p90_s"] <= 400.0
    assert rows["a"]["finish_p50_s"] == b["start_p50_s"]  # the draw is one per sample
    assert forecast(snapshot, samples=40) == rows


def test_ctj_windows_arrive_and_miss_their_deadline() -> None:
    """A CTJ whose windows take 300 s (its history) opens windows at 100 and 1100 with a
    200 s deadline: each misses. With the node busy until 1000 by a declared pod, the
    first window waits 900 s."""
    snapshot = ClusterSnapshot(
        0.0,
        (SnapNode("n0", 8000, 32_000, 1, "A100"),),
        running=(SnapRunning("r", "n0", 1000, 1000, 1, 1000, 0.0, (0,), runtime_s=1000.0),),
        ctjs=(
            SnapCtj(
                "stream",
                1,
                1000,
                1000,
                1,
                1000,
                completed_window_s=(300.0,),
                windows=(SnapWindow(3, 100.0, 300.0), SnapWindow(4, 1100.0, 1300.0)),
            ),
        ),
    )
    rows = forecast(snapshot)
    first, second = rows["stream-w3"], rows["stream-w4"]
    assert (first["start_p50_s"], first["finish_p50_s"]) == (1000.0, 1300.0)
    assert (second["start_p50_s"], second["finish_p50_s"]) == (1300.0, 1600.0)
    assert first["source"] == "ctj-history" and first["miss_fraction"] == 1.0
    assert second["miss_fraction"] == 1.0


def test_horizon_leaves_late_jobs_unpredicted() -> None:
    snapshot = ClusterSnapshot(
        0.0,
        (SnapNode("n0", 8000, 32_000, 1, "A100"),),
        pending=(pending("a", runtime=500.0, age_s=1.0), pending("b", runtime=10.0)),
    )
    rows = forecast(snapshot, horizon=400.0)
    assert rows["a"]["start_p50_s"] == 0.0 and rows["a"]["finish_p50_s"] == ""
    assert rows["b"]["start_p50_s"] == ""


def test_a_job_no_node_can_take_is_said_never_to_start() -> None:
    """n0 has 2 A100s. A 4-GPU job and a V100-only job fit no node even with the cluster
    empty: their rows say so, under every policy; a 3-replica job of 1 GPU each (3 GPUs
    in all on a 2-GPU cluster) cannot start either; the 1-GPU job starts at once."""
    snapshot = ClusterSnapshot(
        0.0,
        (NODE,),
        pending=(
            pending("four", 4, 10.0),
            pending("v100", 1, 10.0, allowed_models=("V100",)),
            pending("three", 1, 10.0, replicas=3),
            pending("one", 1, 10.0),
        ),
    )
    for policy in ("fifo", "fgd"):
        rows = forecast(snapshot, policy)
        assert {job: row["note"] for job, row in rows.items()} == {
            "four": NEVER_FITS,
            "v100": NEVER_FITS,
            "three": NEVER_FITS,
            "one": "",
        }
        assert [rows[j]["start_p50_s"] for j in ("four", "v100", "three")] == ["", "", ""]
        assert rows["one"]["start_p50_s"] == 0.0


def busy_node() -> ClusterSnapshot:
    """Both GPUs of n0 held until 60 s from now; one 1-GPU job of 50 s waits."""
    return ClusterSnapshot(
        0.0,
        (NODE,),
        running=(SnapRunning("r", "n0", 1000, 1000, 2, 1000, 40.0, (0, 1), runtime_s=100.0),),
        pending=(pending("one", 1, 50.0),),
        policy="fifo",
    )


def test_whatif_command_writes_a_run_directory(tmp_path: Path) -> None:
    write_snapshot(busy_node(), tmp_path / "snap.json")
    out = tmp_path / "out"
    args = ["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", str(out)]
    assert main([*args, "--policies", "fifo,bestfit", "--samples", "3", "--workers", "1"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"predictions.csv", "timeline.csv", "summary.json", "forecast.png"} <= files
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["policy"], r["start_p50_s"]) for r in rows] == [
        ("fifo", "60.0"),
        ("bestfit", "60.0"),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert [p["samples"] for p in summary["policies"]] == [3, 3]
    # The run directory's snapshot.json is a valid input again.
    again = tmp_path / "again"
    assert main(["whatif", "--snapshot", str(out / "snapshot.json"), "--out", str(again)]) == 0


def write_pod(path: Path, name: str, gpus: int, metadata: str = "") -> None:
    """A Pod manifest for `--add`: `gpus` whole GPUs, `metadata` more lines under it."""
    path.write_text(
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{metadata}"
        "spec:\n  schedulerName: gpufleet\n  containers:\n  - name: c\n    image: x\n"
        f"    resources: {{limits: {{nvidia.com/gpu: {gpus}}}}}\n"
    )


def test_add_answers_when_a_submitted_pod_would_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_snapshot(busy_node(), tmp_path / "snap.json")
    write_pod(tmp_path / "job.yaml", "mine", 1, "  annotations: {gpufleet.io/sim-runtime: 30s}\n")
    args = ["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", str(tmp_path / "o")]
    assert main([*args, "--add", str(tmp_path / "job.yaml")]) == 0
    # Both GPUs free at 60: "one" (older) takes one, "mine" the other.
    assert "default/mine under fifo  (live policy): starts in 60 s (p50)" in capsys.readouterr().out


def test_add_says_a_pod_larger_than_any_node_never_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_snapshot(busy_node(), tmp_path / "snap.json")
    write_pod(tmp_path / "job.yaml", "wide", 4)
    out = tmp_path / "o"
    args = ["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", str(out)]
    assert main([*args, "--add", str(tmp_path / "job.yaml")]) == 0
    printed = capsys.readouterr().out
    assert f"never starts: default/wide {NEVER_FITS}" in printed
    assert f"default/wide under fifo  (live policy): never starts: {NEVER_FITS}" in printed
    with (out / "predictions.csv").open() as handle:
        notes = {row["job_id"]: row["note"] for row in csv.DictReader(handle)}
    assert notes == {"one": "", "default/wide": NEVER_FITS}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"taken_at_unix": 0}, "field 'nodes': missing"),
        ({"taken_at_unix": 0, "nodes": []}, "at least one node"),
        ({"nodes": [{"name": "n", "cpu_milli": 1}]}, "field 'taken_at_unix': missing"),
        (
            {"taken_at_unix": 0, "nodes": [{"name": "n", "cpu_milli": "lots"}]},
            "field 'nodes[0].cpu_milli': expected an integer >= 0, got 'lots'",
        ),
        (
            {"taken_at_unix": 0, "nodes": [{"name": "n", "cpu_milli": 1, "gpus": 2}]},
            "field 'nodes[0].gpu_model': missing",
        ),
        (
            {
                "taken_at_unix": 0,
                "nodes": [{"name": "n", "cpu_milli": 1}],
                "pending": [{"id": "j", "age_s": -3}],
            },
            "field 'pending[0].age_s': expected a finite number >= 0, got -3",
        ),
        (
            {
                "taken_at_unix": 0,
                "nodes": [{"name": "n", "cpu_milli": 1}],
                "running": [{"id": "p", "node": "n", "gpus": [0, "x"], "elapsed_s": 1}],
            },
            "field 'running[0].gpus[1]': expected a GPU index >= 0, got 'x'",
        ),
        ({"taken_at_unix": 0, "nodes": "n0"}, "field 'nodes': expected a list, got str"),
        ({"version": 7, "taken_at_unix": 0, "nodes": []}, "version 7 is not supported"),
        ([1, 2], "expected an object, got list"),
    ],
)
def test_malformed_snapshot_names_the_field(data: object, message: str) -> None:
    with pytest.raises(TraceError, match=_escaped(message)):
        snapshot_from_json(data, "snap.json")


def _escaped(text: str) -> str:
    return re.escape(text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"running": [{"id": "p", "node": "gone", "elapsed_s": 1}]}, "running[0].node"),
        (
            {"running": [{"id": "p", "node": "n", "num_gpus": 1, "gpus": [5], "elapsed_s": 1}]},
            "running[0].gpus",
        ),
        ({"pending": [{"id": "j", "num_gpus": 2, "gpu_milli": 500}]}, "pending[0].gpu_milli"),
        ({"pending": [{"id": "j"}, {"id": "j"}]}, "two jobs are named 'j'"),
    ],
)
def test_inconsistent_snapshot_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    data = {
        "taken_at_unix": 0,
        "nodes": [{"name": "n", "cpu_milli": 1000, "gpus": 2, "gpu_model": "A100"}],
    }
    (tmp_path / "snap.json").write_text(json.dumps({**data, **change}))
    out = tmp_path / "out"
    assert main(["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_not_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "snap.json").write_text("{nodes: ")
    out = str(tmp_path / "out")
    assert main(["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", out]) == 2
    assert "snap.json: not JSON" in capsys.readouterr().err


def test_policy_forecast_percentiles_never_interpolate_to_nan() -> None:
    start = np.array([[10.0, np.inf], [20.0, np.inf], [30.0, 5.0]])
    f = PolicyForecast("p", 3, start, start, np.zeros(2), np.zeros(2))
    assert f.start_at(50).tolist() == [20.0, np.inf]
    assert f.start_at(90).tolist() == [30.0, np.inf]


def test_score_reports_error_per_source_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Forecast at Unix 1000: `one` (declared 50 s) and `two` (history: 30 s) start at 60
    when the running pod ends; `one` finishes at 110, `two` at 90. The recording's clock
    starts at Unix 990 and saw `one` run 75 → 130 and `two` start at 70, still running:
    errors 5 s (start) and 10 s (finish) for declared, 0 s (start) for shape-history."""
    snapshot = ClusterSnapshot(
        1000.0,
        (NODE,),
        running=(SnapRunning("r", "n0", 1000, 1000, 2, 1000, 40.0, (0, 1), runtime_s=100.0),),
        pending=(pending("default/one", 1, 50.0, age_s=9.0), pending("default/two", age_s=5.0)),
        history=(SnapHistory(1, 1, 1000, 30.0),),
        policy="fifo",
    )
    write_snapshot(snapshot, tmp_path / "snap.json")
    forecast = tmp_path / "forecast"
    run = ["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", str(forecast)]
    assert main([*run, "--workers", "1"]) == 0
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "recording.json").write_text('{"began_s": 0, "ended_s": 200, "origin_unix_s": 990}')
    (recorded / "placements.csv").write_text(
        "job_id,pod,node,gpus,gpu_milli,start_s,end_s,scheduler\n"
        "one,one,n0,0,1000,75,130,gpufleet\n"
        "two,two,n0,1,1000,70,,gpufleet\n"
    )
    out = tmp_path / "score"
    score = ["whatif", "--score", str(recorded), "--forecast", str(forecast), "--out", str(out)]
    assert main(score) == 0
    with (out / "score.csv").open() as handle:
        table = {row["source"]: row for row in csv.DictReader(handle)}
    assert (
        table["declared"]["start_mean_abs_err_s"],
        table["declared"]["finish_mean_abs_err_s"],
    ) == (
        "5.0",
        "10.0",
    )
    assert table["shape-history"]["start_mean_abs_err_s"] == "0.0"
    assert table["shape-history"]["finish_jobs"] == "0"
    assert (table["all"]["jobs"], table["all"]["start_mean_abs_err_s"]) == ("2", "2.5")
    assert "declared" in capsys.readouterr().out


def test_score_needs_the_forecast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["whatif", "--score", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--score needs --forecast" in capsys.readouterr().err


def test_policy_options_reach_only_their_policy(tmp_path: Path) -> None:
    """One GPU free, a 2-GPU job (10 s) queued before a 1-GPU one: strict FIFO keeps the
    small job behind the big one, which starts when the held GPU frees at 60, so the
    small one starts at 70; `-o fifo:blocking=false` starts it at once; best-fit is not
    touched by the fifo option."""
    snapshot = ClusterSnapshot(
        0.0,
        (NODE,),
        running=(SnapRunning("r", "n0", 1000, 1000, 1, 1000, 40.0, (0,), runtime_s=100.0),),
        pending=(pending("big", 2, 10.0, age_s=9.0), pending("small", 1, 10.0, age_s=1.0)),
    )
    write_snapshot(snapshot, tmp_path / "snap.json")
    starts = {}
    for label, extra in (("strict", []), ("loose", ["-o", "fifo:blocking=false"])):
        out = tmp_path / label
        args = ["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", str(out)]
        assert main([*args, "--policies", "fifo,bestfit", *extra]) == 0
        with (out / "predictions.csv").open() as handle:
            for row in csv.DictReader(handle):
                starts[label, row["policy"], row["job_id"]] = row["start_p50_s"]
    assert starts["strict", "fifo", "small"] == "70.0"
    assert starts["loose", "fifo", "small"] == "0.0"
    assert starts["strict", "bestfit", "small"] == starts["loose", "bestfit", "small"] == "0.0"


def test_an_option_without_its_policy_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_snapshot(busy_node(), tmp_path / "snap.json")
    args = ["whatif", "--snapshot", str(tmp_path / "snap.json"), "--out", str(tmp_path / "o")]
    assert main([*args, "-o", "blocking=false"]) == 2
    assert "expected POLICY:KEY=VALUE" in capsys.readouterr().err


def test_resolution_rounds_remaining_times_up(tmp_path: Path) -> None:
    """With --resolution 50 the running pod's 60 s left become 100 and the job's 50 s
    stay 50: it starts at 100 and finishes at 150 (exactly: 60 and 110)."""
    plan = plan_forecast(busy_node(), 1e4, resolution_s=50.0)
    runs = run_samples(plan, [PolicySpec("fifo", {})], 1, seed=0, workers=1)
    [row] = prediction_rows(plan, combine(runs, 1))
    assert (row["start_p50_s"], row["finish_p50_s"]) == (100.0, 150.0)
    with pytest.raises(ValueError, match="--resolution must be >= 0 and below the horizon"):
        plan_forecast(busy_node(), 100.0, resolution_s=100.0)
