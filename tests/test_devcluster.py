"""`gpufleet dev-cluster` without a cluster: which processes `down` may signal, which
files it may remove, what `up` refuses, and the fake nodes it would create. The real
start-up is driven end to end by tests/kube/test_readme_walkthrough.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster.fleet import FAKE, GPU_PRODUCT_LABEL, gpu_nodes, node_manifest
from controller.devcluster.state import (
    STATE_FILE,
    ClusterState,
    Process,
    process_identity,
    remove_files,
    stop_processes,
)
from gpufleet.cli import main


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def state_of(processes: list[Process], files: list[str], created: bool = False) -> ClusterState:
    return ClusterState("https://127.0.0.1:1", "/bin", "/k", ["n"], processes, files, created)


def test_down_leaves_a_reused_pid_alone(sleeper: subprocess.Popen[bytes]) -> None:
    """A PID recorded for a process that has since ended may name someone else's
    process now: a different start time or command line means it is not ours."""
    identity = process_identity(sleeper.pid)
    assert identity is not None and "time.sleep(120)" in identity
    recycled = Process("etcd", sleeper.pid, identity.replace("sleep(120)", "sleep(121)"))
    assert stop_processes(state_of([recycled], [])) == []
    assert sleeper.poll() is None

    ours = Process("etcd", sleeper.pid, identity)
    assert stop_processes(state_of([ours], [])) == ["etcd"]
    assert sleeper.wait(timeout=30) is not None


def test_remove_files_takes_only_what_up_wrote(tmp_path: Path) -> None:
    (tmp_path / "admin.kubeconfig").write_text("x")
    (tmp_path / "etcd").mkdir()
    (tmp_path / "etcd" / "member").write_text("x")
    (tmp_path / "notes.txt").write_text("the user's")
    state_of([], ["admin.kubeconfig", "etcd"], created=True).save(tmp_path)

    remove_files(tmp_path, ["admin.kubeconfig", "etcd"], created_dir=True)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_remove_files_removes_the_directory_up_made_once_empty(tmp_path: Path) -> None:
    directory = tmp_path / "dev-cluster"
    directory.mkdir()
    (directory / "ca.crt").write_text("x")
    remove_files(directory, ["ca.crt"], created_dir=True)
    assert not directory.exists()


def test_up_refuses_a_directory_with_files_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["dev-cluster", "up", "--dir", str(tmp_path)]) == 2
    assert "holds files gpufleet did not write (mine.txt)" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_up_refuses_while_its_cluster_runs(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    identity = process_identity(sleeper.pid)
    assert identity is not None
    state_of([Process("etcd", sleeper.pid, identity)], []).save(tmp_path)
    assert main(["dev-cluster", "up", "--dir", str(tmp_path)]) == 2
    assert "a dev cluster already runs" in capsys.readouterr().err
    assert (tmp_path / STATE_FILE).exists() and sleeper.poll() is None


def test_status_without_a_cluster_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dev-cluster", "status", "--dir", str(tmp_path)]) == 2
    assert f"no dev cluster in {tmp_path}" in capsys.readouterr().err


def test_an_unknown_model_is_refused_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dev-cluster", "up", "--models", "A100,Z9"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--models: unknown GPU model 'Z9'" in err and "A100" in err


def test_nodes_carry_gfd_labels_kwok_taint_and_models_in_turn() -> None:
    nodes = gpu_nodes(12, 4, ["A100", "V100", "NVIDIA-A100-80GB-PCIe"])
    assert [n.name for n in nodes[:2]] == ["gpu-node-00", "gpu-node-01"]
    assert [n.product for n in nodes[:3]] == [
        "NVIDIA-A100-SXM4-40GB",
        "Tesla-V100-SXM2-16GB",
        "NVIDIA-A100-80GB-PCIe",
    ]
    assert [n.gpu_model for n in nodes[:3]] == ["A100", "V100", "A100"]
    manifest = node_manifest(nodes[1])
    assert manifest["metadata"]["labels"][GPU_PRODUCT_LABEL] == "Tesla-V100-SXM2-16GB"
    assert manifest["metadata"]["labels"]["nvidia.com/gpu.count"] == "4"
    assert manifest["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert manifest["spec"]["taints"] == [{"key": FAKE, "value": "fake", "effect": "NoSchedule"}]
    assert node_manifest(nodes[1], tainted=False)["spec"]["taints"] == []
