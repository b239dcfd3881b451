"""The `gpufleet` command end to end: outputs, determinism, and clean failures."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gpufleet.cli import main
from policies import policy_names
from policies.registry import parse_policy_label
from simulator.progress import ProgressBar

SUMMARY_KEYS = {
    "policy",
    "trace",
    "seed",
    "jobs",
    "completed",
    "avg_jct_s",
    "p50_jct_s",
    "p99_jct_s",
    "makespan_s",
    "gpu_util",
}


def test_simulate_default_writes_every_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--jobs", "60", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".gpufleet-output.json",
        "config.json",
        "jobs.parquet",
        "summary.json",
        "timeline.parquet",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["jobs"] == summary["completed"] == 60
    assert 0 < summary["gpu_util"] <= 1
    assert summary["p50_jct_s"] <= summary["p99_jct_s"]
    jobs = pq.read_table(out / "jobs.parquet").to_pandas()
    assert len(jobs) == 60
    assert (jobs["jct_s"] >= jobs["queue_delay_s"]).all()
    assert summary["avg_jct_s"] == pytest.approx(jobs["jct_s"].mean())
    timeline = pq.read_table(out / "timeline.parquet").to_pandas()
    assert {"gpus_A100", "gpus_V100"} <= set(timeline.columns)
    assert timeline["alloc_gpu_pct"].between(0, 100).all()
    config = json.loads((out / "config.json").read_text())
    assert config["policy"] == "fifo" and config["policy_config"]["blocking"] is True
    assert "avg_jct_s" in capsys.readouterr().out


def test_two_runs_write_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        args = ["simulate", "--jobs", "80", "--policy", "random", "--seed", "3"]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    for file in ("jobs.parquet", "timeline.parquet", "summary.json", "config.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_compare_writes_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert (
        main(
            ["compare", "--jobs", "40", "--policies", "fifo,las", "--gpus", "16", "--out", str(out)]
        )
        == 0
    )
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("policy,jobs,completed")
    assert [line.split(",")[0] for line in lines[1:]] == ["fifo", "las"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fifo" / "summary.json").exists()


def test_traces_generate_inspect_convert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = tmp_path / "gen.csv"
    assert main(["traces", "generate", "--jobs", "25", "--seed", "4", "--out", str(gen)]) == 0
    assert main(["traces", "inspect", str(gen)]) == 0
    assert "jobs: 25" in capsys.readouterr().out
    pods = tmp_path / "pods.csv"
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,100,1,300\n")
    assert (
        main(
            ["traces", "convert", str(pods), "--format", "openb", "--out", str(tmp_path / "c.csv")]
        )
        == 2
    )
    assert "creation/deletion" in capsys.readouterr().err
    assert (
        main(["simulate", "--trace", str(gen), "--gpus", "16", "--out", str(tmp_path / "r")]) == 0
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--policy", "nope"], "unknown policy 'nope'"),
        (["simulate", "--trace", "/no/such.csv"], "/no/such.csv: no such file"),
        (["simulate", "--gpus", "0"], "--gpus must be at least 1"),
        (["simulate", "-o", "blocking"], "not KEY=VALUE"),
        (["simulate", "-o", "speed=3"], "has no option 'speed'"),
        (["simulate", "-o", "blocking=maybe"], "cannot read 'maybe'"),
        (["simulate", "--cluster", "no-such-cluster"], "no-such-cluster"),
        (["compare", "--policies", "fifo,nope"], "unknown policy 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpufleet: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_simulate_says_what_its_averages_leave_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 128-GPU job on the 64-GPU default cluster is rejected; the table's averages
    are the other job's alone, and a line under the table says so."""
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,duration,num_gpus\n0,10,1\n5,10,128\n")
    args = ["simulate", "--trace", str(trace), "--format", "philly"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "fifo: of 2 jobs, 1 rejected (they fit no node, even with the cluster empty)" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["completed"], summary["rejected"], summary["avg_jct_s"]) == (1, 1, 10.0)
    assert main(["simulate", "--jobs", "20", "--out", str(tmp_path / "plain")]) == 0
    assert "rejected" not in capsys.readouterr().out


def test_malformed_trace_leaves_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,duration,num_gpus\n0,10,1\n5,ten,1\n")
    out = tmp_path / "out"
    code = main(["simulate", "--trace", str(trace), "--format", "philly", "--out", str(out)])
    assert code == 2
    assert f"{trace}:3: field 'duration'" in capsys.readouterr().err
    assert not out.exists()


def test_bad_trace_leaves_an_existing_output_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["simulate", "--jobs", "20", "--out", str(out)]) == 0
    (out / "thesis.tex").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,duration,num_gpus\n0,10,1\n5,ten,1\n")
    assert main(["simulate", "--trace", str(trace), "--format", "philly", "--out", str(out)]) == 2
    assert f"{trace}:3: field 'duration'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_out_dot_keeps_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("mine")
    monkeypatch.chdir(work)
    assert main(["simulate", "--jobs", "20", "--out", "."]) == 2
    assert "--out . is not empty" in capsys.readouterr().err
    assert [p.name for p in work.iterdir()] == ["thesis.tex"]
    assert main(["simulate", "--jobs", "20", "--out", ".", "--force"]) == 0
    assert (work / "thesis.tex").read_text() == "mine"
    assert (work / "summary.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["work"]  # no staging left beside it


def test_traces_out_replaces_a_file_but_not_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = tmp_path / "jobs.csv"
    gen.write_text("an older trace\n")
    assert main(["traces", "generate", "--jobs", "5", "--out", str(gen)]) == 0
    assert gen.read_text().startswith("id,")
    assert main(["traces", "generate", "--jobs", "5", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path} is a directory" in capsys.readouterr().err


def test_help_answers_for_every_command() -> None:
    for args in (
        ["--help"],
        ["simulate", "--help"],
        ["compare", "--help"],
        ["traces", "generate", "--help"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "gpufleet", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0 and "usage: gpufleet" in done.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["simulate"],
        ["compare"],
        ["experiment", "continual"],
        ["experiment", "fgd-inflation"],
        ["experiment", "hetero"],
        ["experiment", "rap"],
        ["controller", "record"],
    ],
)
def test_every_directory_writer_explains_force(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit, match="0"):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--force" in text and "nothing is deleted" in text and "other files are kept" in text


@pytest.mark.parametrize("action", ["generate", "convert"])
def test_file_writers_say_they_replace_the_named_file(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit, match="0"):
        main(["traces", action, "--help"])
    assert "a file of that name is replaced" in " ".join(capsys.readouterr().out.split())


def test_progress_bar_draws_and_finishes_a_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(total=4, label="fifo", enabled=True, stream=stream, interval=0.0)
    bar.update(1)
    bar.update(2)
    bar.close()
    text = stream.getvalue()
    assert "25.0% 1/4" in text and "100.0% 4/4" in text and text.endswith("\n")
    quiet = io.StringIO()
    ProgressBar(total=4, label="x", enabled=False, stream=quiet).update(4)
    assert quiet.getvalue() == ""


def test_experiment_policy_labels_share_one_syntax() -> None:
    assert parse_policy_label("sia") == ("sia", {})
    assert parse_policy_label(" fgd:mode=artifact:tolerance=0.5 ") == (
        "fgd",
        {"mode": "artifact", "tolerance": "0.5"},
    )
    assert parse_policy_label("fgd:mode=artifact;tolerance=0.5") == parse_policy_label(
        "fgd:mode=artifact:tolerance=0.5"
    )
    with pytest.raises(ValueError, match="'mode' is not KEY=VALUE"):
        parse_policy_label("fgd:mode")


def test_policies_lists_each_round_length_from_its_default_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    listed = [line.split(maxsplit=1) for line in out.splitlines() if line[:1].isalpha()]
    kinds = {
        name: re.match(r"rounds of \S+ s|event-driven", rest)[0]  # type: ignore[index]
        for name, rest in listed
        if name in policy_names()
    }
    assert kinds["gavel"] == "rounds of 360 s"
    assert kinds["sia"] == "rounds of 60 s"
    assert kinds["thief"] == "rounds of 30 s"
    assert kinds["fifo"] == "event-driven"
    # Which published setting a default follows, and how each trace format is run.
    assert "defaults follow Gavel's paper and simulator: max-min fairness" in out
    assert "Sia adapts jobs, every other policy runs TunedJobs rigidly" in " ".join(out.split())
