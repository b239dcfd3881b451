"""Outputs never destroy data: every command that writes a directory refuses one holding
files gpufleet did not write (unless --force, which writes beside them), replaces only
its own files on a re-run, and leaves the directory as it was when it fails."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.recorder import TraceRecorder
from controller.scheduling.encoders import WholeGpu
from gpufleet.cli import main
from tests.test_fgd_inflation import NODES, PODS
from tests.test_hetero_experiment import invented_data as hetero_data
from tests.test_rap_experiment import invented_data as rap_data
from traces.csvio import write_rows
from traces.outputs import MARKER, OutputRefused, check_output_dir, output_directory, staged_file

THESIS = b"\\documentclass{article} % three years of work\n"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below `root` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def hidden(directory: Path) -> list[str]:
    """Hidden entries: a staging directory or file left behind would show here."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def listed(out: Path) -> list[str]:
    files: list[str] = json.loads((out / MARKER).read_text())["files"]
    return files


def with_thesis(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "thesis.tex").write_bytes(THESIS)
    return out


def write_files(stage: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        (stage / name).write_text(text)


def publish(out: Path, files: dict[str, str], force: bool = False) -> None:
    with output_directory(out, "test", force) as stage:
        write_files(stage, files)


# -- the module ------------------------------------------------------------------------


def test_a_new_directory_gets_the_files_and_a_marker_listing_them(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    publish(out, {"a.csv": "a", "runs/fifo/b.csv": "b"})
    assert snapshot(out).keys() == {"a.csv", "runs/fifo/b.csv", MARKER}
    assert listed(out) == ["a.csv", "runs/fifo/b.csv"]
    assert json.loads((out / MARKER).read_text())["command"] == "gpufleet test"
    assert hidden(out.parent) == []


def test_a_new_directory_has_the_umask_mode_not_a_temporary_one(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        publish(tmp_path / "out", {"a.csv": "a"})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_an_empty_directory_is_used(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    publish(out, {"a.csv": "a"})
    assert listed(out) == ["a.csv"]


def test_a_directory_holding_other_files_is_refused_before_any_work(tmp_path: Path) -> None:
    out = with_thesis(tmp_path / "out")
    ran = False
    message = rf"--out {re.escape(str(out))} is not empty .* --force writes beside"
    with pytest.raises(OutputRefused, match=message), output_directory(out, "test") as _:
        ran = True
    assert not ran
    assert snapshot(out) == {"thesis.tex": THESIS}
    assert hidden(tmp_path) == []


def test_force_writes_beside_and_replaces_only_same_named_files(tmp_path: Path) -> None:
    out = with_thesis(tmp_path / "out")
    (out / "a.csv").write_text("the user's")
    publish(out, {"a.csv": "ours", "b.csv": "ours"}, force=True)
    assert snapshot(out) == {
        "thesis.tex": THESIS,
        "a.csv": b"ours",
        "b.csv": b"ours",
        MARKER: (out / MARKER).read_bytes(),
    }
    assert listed(out) == ["a.csv", "b.csv"]


def test_a_rerun_replaces_its_files_drops_stale_ones_and_keeps_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, {"a.csv": "1", "las/jobs.csv": "1", "old/x.csv": "1", "old/y.csv": "1"})
    (out / "notes.md").write_text("mine")
    (out / "las" / "notes.md").write_text("mine too")
    publish(out, {"a.csv": "2", "fifo/jobs.csv": "2"})
    assert snapshot(out) == {
        "a.csv": b"2",
        "fifo/jobs.csv": b"2",
        "notes.md": b"mine",
        "las/notes.md": b"mine too",
        MARKER: (out / MARKER).read_bytes(),
    }
    assert listed(out) == ["a.csv", "fifo/jobs.csv"]
    assert not (out / "old").exists()  # emptied of our files, so removed


def test_a_failure_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, {"a.csv": "1"})
    (out / "notes.md").write_text("mine")
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="midway"), output_directory(out, "test") as stage:
        (stage / "a.csv").write_text("2")
        raise RuntimeError("failed midway")
    assert snapshot(out) == before
    assert hidden(tmp_path) == []


def test_an_unlisted_file_of_the_same_name_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish(out, {"a.csv": "1"})
    (out / "b.csv").write_text("the user's")
    with pytest.raises(OutputRefused, match=r"b\.csv was not written by gpufleet"):
        publish(out, {"a.csv": "2", "b.csv": "2"})
    assert (out / "a.csv").read_text() == "1" and (out / "b.csv").read_text() == "the user's"
    publish(out, {"a.csv": "2", "b.csv": "2"}, force=True)
    assert (out / "b.csv").read_text() == "2"


@pytest.mark.parametrize("files", [["../victim.txt"], ["/tmp/victim.txt"], ["./a"], "a", [3]])
def test_a_marker_listing_paths_outside_counts_as_no_marker(tmp_path: Path, files: object) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"files": files}))
    with pytest.raises(OutputRefused, match="not a gpufleet output"):
        publish(out, {"a.csv": "1"})
    publish(out, {"a.csv": "1"}, force=True)
    assert victim.read_text() == "keep"
    assert listed(out) == ["a.csv"]


def test_a_file_where_the_directory_should_be_is_refused_even_with_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("data")
    for force in (False, True):
        with pytest.raises(OutputRefused, match="exists and is not a directory"):
            check_output_dir(out, force)
    assert out.read_text() == "data"


def test_a_staged_file_replaces_its_name_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="midway"), staged_file(path) as stage:
        stage.write_text("half")
        raise RuntimeError("midway")
    assert path.read_text() == "old" and hidden(tmp_path) == []
    with staged_file(path) as stage:
        assert stage.suffix == ".csv"  # writers that pick a format by suffix still work
        stage.write_text("new")
    assert path.read_text() == "new" and hidden(tmp_path) == []


def test_a_staged_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputRefused, match="is a directory"), staged_file(tmp_path):
        pass


def test_csv_rows_failing_midway_leave_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("old")

    def rows() -> Iterator[dict[str, object]]:
        yield {"a": 1}
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        write_rows(path, ["a"], rows())
    assert path.read_text() == "old" and hidden(tmp_path) == []


# -- controller record -----------------------------------------------------------------


def test_the_recorder_refuses_other_files_writes_beside_with_force_and_reruns(
    tmp_path: Path,
) -> None:
    out = with_thesis(tmp_path / "observed")
    recorder = TraceRecorder(WholeGpu())
    with pytest.raises(OutputRefused, match=rf"--out {re.escape(str(out))} .* --force"):
        recorder.write(out)
    assert snapshot(out) == {"thesis.tex": THESIS}
    assert recorder.write(out, force=True) == 0
    assert listed(out) == ["jobs.csv", "nodes.csv", "placements.csv", "recording.json"]
    (out / "notes.md").write_text("mine")
    recorder.write(out)
    assert (out / "thesis.tex").read_bytes() == THESIS
    assert (out / "notes.md").read_text() == "mine"


def test_controller_record_refuses_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = with_thesis(tmp_path / "observed")
    missing = tmp_path / "no-kubeconfig"
    assert main(["controller", "record", "--out", str(out), "--kubeconfig", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err and "kubeconfig" not in err
    assert snapshot(out) == {"thesis.tex": THESIS}


# -- every command that writes a directory ----------------------------------------------


@dataclass(frozen=True)
class Command:
    argv: Callable[[Path], list[str]]
    """The command line without --out, given a folder for its inputs."""
    fails_at: str
    """A function the command calls after it has written part of its output."""


def simulate_args(_: Path) -> list[str]:
    return ["simulate", "--jobs", "20", "--gpus", "8"]


def compare_args(_: Path) -> list[str]:
    return ["compare", "--jobs", "20", "--gpus", "8", "--policies", "fifo,las"]


def continual_args(_: Path) -> list[str]:
    argv = ["experiment", "continual", "--windows", "1", "--scenarios", "light"]
    return [*argv, "--policies", "fifo"]


def fgd_args(inputs: Path) -> list[str]:
    (inputs / "nodes.csv").write_text(NODES)
    (inputs / "openb_pod_list_tiny.csv").write_text(PODS)
    pods, nodes = inputs / "openb_pod_list_tiny.csv", inputs / "nodes.csv"
    argv = ["experiment", "fgd-inflation", "--pods", str(pods), "--nodes", str(nodes)]
    return [*argv, "--policies", "bestfit", "--seeds", "1", "--workers", "1", "--no-plots"]


def hetero_args(inputs: Path) -> list[str]:
    argv = ["experiment", "hetero", "--workloads", str(hetero_data(inputs))]
    return [*argv, "--cluster", "sia-homog-64", "--policies", "fifo"]


def rap_args(inputs: Path) -> list[str]:
    argv = ["experiment", "rap", "--data", str(rap_data(inputs)), "--jobs", "25"]
    return [*argv, "--seeds", "1", "--rates", "2", "--host-slowdowns", "0.05"]


COMMANDS = {
    "simulate": Command(simulate_args, "simulator.run.write_json"),
    "compare": Command(compare_args, "simulator.compare.plot_comparison"),
    "continual": Command(continual_args, "simulator.experiments.continual.plot_accuracy_by_policy"),
    "fgd-inflation": Command(fgd_args, "simulator.experiments.fgd_inflation.summarise"),
    "hetero": Command(hetero_args, "simulator.experiments.hetero.plot_results"),
    "rap": Command(rap_args, "simulator.experiments.rap.plot_cluster"),
}


@pytest.fixture(params=sorted(COMMANDS))
def command(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Command, list[str]]:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    chosen = COMMANDS[request.param]
    return chosen, chosen.argv(inputs)


def test_a_directory_holding_an_unrelated_file_is_refused(
    command: tuple[Command, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, argv = command
    out = with_thesis(tmp_path / "out")
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"gpufleet: error: --out {out} is not empty" in err and "--force" in err
    assert snapshot(out) == {"thesis.tex": THESIS}
    assert hidden(tmp_path) == []


def test_force_writes_beside_the_unrelated_file(
    command: tuple[Command, list[str]], tmp_path: Path
) -> None:
    _, argv = command
    out = with_thesis(tmp_path / "out")
    assert main([*argv, "--out", str(out), "--force"]) == 0
    assert (out / "thesis.tex").read_bytes() == THESIS
    assert "thesis.tex" not in listed(out)
    assert set(snapshot(out)) == {"thesis.tex", MARKER, *listed(out)}


def test_a_rerun_replaces_its_own_files_and_keeps_one_added_meanwhile(
    command: tuple[Command, list[str]], tmp_path: Path
) -> None:
    _, argv = command
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    ours = listed(out)
    tampered = out / ours[0]
    tampered.write_bytes(b"edited")
    with_thesis(out)
    assert main([*argv, "--out", str(out)]) == 0
    assert tampered.read_bytes() != b"edited"
    assert (out / "thesis.tex").read_bytes() == THESIS
    assert listed(out) == ours


def test_a_failure_midway_leaves_the_directory_as_it_was(
    command: tuple[Command, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chosen, argv = command
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    with_thesis(out)
    before = snapshot(out)

    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(chosen.fails_at, fail)
    assert main([*argv, "--out", str(out)]) == 2
    assert "disk full" in capsys.readouterr().err
    assert snapshot(out) == before
    assert hidden(tmp_path) == []
