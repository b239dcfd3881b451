"""The README's Kubernetes walkthroughs, run as written on a dev cluster that
`gpufleet dev-cluster up` starts, with kubectl v1.37 from tools/controlplane/build.sh.

Each fenced block after `<!-- dev-cluster walkthrough: NAME -->` in README.md is run, in
order, in one bash process (`set -euo pipefail`, so any command that fails as written
fails the test), the way a user pastes them into one terminal: from a scratch directory
that links the checkout's deploy/, examples/ and tools/, with a fresh HOME (so the dev
cluster lives in the test's directory, not the user's) and METRICS on a free port. After
the blocks that matter the test reads the cluster back through the same shell.

Waits are generous: a shared 2-core machine may take minutes where a laptop takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster.launcher import REPO, free_port
from controller.devcluster.state import STATE_FILE, ClusterState, process_identity

pytestmark = pytest.mark.kube

MARKER = re.compile(r"<!-- dev-cluster walkthrough: ([\w-]+) -->\n```bash\n(.*?)\n```", re.S)
BLOCK_TIMEOUT_S = 900.0
DEV_CLUSTER_DIR = Path(".cache/gpufleet/dev-cluster")


def walkthrough(name: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = [body for found, body in MARKER.findall(readme) if found == name]
    assert blocks, f"README.md has no '<!-- dev-cluster walkthrough: {name} -->' blocks"
    return blocks


class Shell:
    """One bash process, as a user's terminal: variables, `eval`, background jobs and
    `kill %1` carry from block to block. Each block is sourced from a file with stdin
    from /dev/null, so no command can read the next block as its input."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.transcript: list[str] = []
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send("set -euo pipefail")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def run(self, block: str, timeout_s: float = BLOCK_TIMEOUT_S) -> str:
        """The block's output; fails with the transcript if a command fails."""
        script = self.cwd / f".block-{uuid.uuid4().hex}.sh"
        script.write_text(block + "\n")
        done = f"--- block done {uuid.uuid4().hex} ---"
        self.transcript.append(f"$ {block}")
        self._send(f"source {script} < /dev/null; echo '{done}'")
        output: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                pytest.fail(f"block still running after {timeout_s:.0f}s:\n{self.log()}")
            if line is None:
                pytest.fail(f"a command failed as written (bash exited):\n{self.log()}")
            if line == done:
                return "\n".join(output)
            output.append(line)
            self.transcript.append(line)

    def json(self, command: str) -> Any:
        return json.loads(self.run(command))

    def log(self) -> str:
        return "\n".join(self.transcript)[-6000:]

    def close(self) -> None:
        """End bash and what it runs in the background (its process group: the
        controller a failed walkthrough left running); the dev cluster has its own."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()


@pytest.fixture
def shell(controlplane_bin: Path, tmp_path: Path) -> Iterator[Shell]:
    """A fresh terminal in a scratch directory beside the checkout's files. A dev
    cluster left running by a failed walkthrough is taken down afterwards."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    for name in ("deploy", "examples", "tools"):
        (work / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(
        HOME=str(home),
        # build.sh finds the cached binaries where this session found them.
        GPUFLEET_CACHE=str(controlplane_bin.parents[2]),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        METRICS=f"127.0.0.1:{free_port()}",
        PYTHONUNBUFFERED="1",
    )
    terminal = Shell(work, env)
    try:
        yield terminal
    finally:
        terminal.close()
        if (home / DEV_CLUSTER_DIR / STATE_FILE).exists():
            subprocess.run(
                [sys.executable, "-m", "gpufleet.cli", "dev-cluster", "down", "--dir",
                 str(home / DEV_CLUSTER_DIR)],
                check=False, capture_output=True, timeout=120,
            )  # fmt: skip


def test_laptop_walkthrough_schedules_the_example_ctj(shell: Shell) -> None:
    *blocks, teardown = walkthrough("laptop")
    output = "\n".join(shell.run(block) for block in blocks)
    assert "NVIDIA-A100-SXM4-40GB" in output and "Tesla-V100-SXM2-16GB" in output
    ctj = shell.json("kubectl get ctj camera-17 -o json")
    assert ctj["status"]["phase"] == "Retraining"
    assert_gang_placed_by_gpufleet(shell)
    assert_deployment_placed_by_kube_scheduler(shell)
    state = ClusterState.load(Path(shell.run("echo $HOME")) / DEV_CLUSTER_DIR)
    assert state is not None and len(state.running()) == len(state.processes) == 5

    shell.run(teardown)
    directory = Path(shell.run("echo $HOME")) / DEV_CLUSTER_DIR
    assert not directory.exists(), "down leaves nothing behind in a directory up made"
    assert all(process_identity(p.pid) != p.identity for p in state.processes)


def test_in_cluster_walkthrough_as_the_service_account(shell: Shell) -> None:
    start, apply, as_account, ctj, delete, own_pod, logs, teardown = walkthrough("in-cluster")
    shell.run(start)
    shell.run(apply)
    assert_deployment_placed_by_kube_scheduler(shell)

    output = shell.run(as_account)
    assert "system:serviceaccount:gpufleet-system:gpufleet-controller" in output
    holder = output.splitlines()[-1].strip()
    stand_ins = shell.run("kubectl -n gpufleet-system get pods -o name")
    assert holder and holder not in stand_ins, "the replica in the shell leads, not a stand-in"

    output = shell.run(ctj)
    assert re.search(r"^camera-17\s+Retraining\s+0\s", output, re.M), output
    assert_gang_placed_by_gpufleet(shell)

    shell.run(delete)
    assert shell.json("kubectl get pods -l ctj.gpufleet.io/name=camera-17 -o json")["items"] == []

    output = shell.run(own_pod)
    assert re.search(r"Successfully assigned default/train-1 to gpu-node-\d+ \(GPUs", output)

    output = shell.run(logs)
    assert all(json.loads(line)["level"] for line in output.splitlines()[:3])
    assert "ok" in output.splitlines()
    bindings = re.search(r"^gpufleet_bindings_total (\S+)$", output, re.M)
    assert bindings and float(bindings.group(1)) >= 3, "the gang of two and train-1"

    shell.run(teardown)
    assert not (Path(shell.run("echo $HOME")) / DEV_CLUSTER_DIR).exists()


def assert_gang_placed_by_gpufleet(shell: Shell) -> None:
    pods = shell.json("kubectl get pods -l ctj.gpufleet.io/name=camera-17 -o json")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        assert "gpufleet.io/assigned-gpus" in pod["metadata"]["annotations"]


def assert_deployment_placed_by_kube_scheduler(shell: Shell) -> None:
    """Both replicas bound to the untainted CPU node, each by the default scheduler."""
    pods = shell.json("kubectl -n gpufleet-system get pods -o json")["items"]
    assert len(pods) == 2
    assert {p["spec"]["nodeName"] for p in pods} == {"system-node-0"}
    events = shell.json(
        "kubectl -n gpufleet-system get events.events.k8s.io -o json "
        "--field-selector reason=Scheduled"
    )["items"]
    placed_by = {e["regarding"]["name"]: e["reportingController"] for e in events}
    assert {placed_by.get(p["metadata"]["name"]) for p in pods} == {"default-scheduler"}
