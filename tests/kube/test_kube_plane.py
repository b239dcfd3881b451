"""A test run's control plane dies with the process that started it, even by SIGKILL
(`PlaneOptions.die_with_starter`), so a killed run leaves no etcd or kube-apiserver
behind to load the machine for the next."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from controller.devcluster.launcher import REPO

pytestmark = pytest.mark.kube

STARTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from controller.devcluster.launcher import ControlPlane, PlaneOptions
    plane = ControlPlane(Path(sys.argv[1]), Path(sys.argv[2]), PlaneOptions(die_with_starter=True))
    plane.start()
    print(" ".join(str(p.pid) for p in plane.procs.values()), flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has died


def test_a_test_runs_plane_dies_with_its_killed_starter(
    controlplane_bin: Path, tmp_path: Path
) -> None:
    assert shutil.which("setpriv"), "util-linux's setpriv sets the parent-death signal"
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(controlplane_bin), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert starter.stdout is not None
        pids = [int(p) for p in starter.stdout.readline().split()]
        assert len(pids) >= 4 and all(map(alive, pids))  # etcd, apiserver, kcm, kwok
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        deadline = time.monotonic() + 20
        while any(map(alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in pids if alive(p)]
    finally:
        starter.kill()
        starter.wait()
