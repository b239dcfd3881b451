"""What `gpufleet dev-cluster up` started and wrote, kept in `<dir>/dev-cluster.json` so
that `status` and `down` (later, from another shell) act on exactly that: a process is
signalled only while its PID still names the process we started (same start time and
command line), and only the files recorded here are removed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "dev-cluster.json"
PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    name: str
    pid: int
    identity: str
    """`ps`'s start time and command line when we started it: a recycled PID differs."""


@dataclass
class ClusterState:
    server: str
    bin_dir: str
    admin_kubeconfig: str
    nodes: list[str]
    processes: list[Process]
    files: list[str]
    """Paths relative to the directory (a directory entry is removed with its contents)."""
    created_dir: bool
    ports: dict[str, int] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        path = directory / STATE_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            raw["processes"] = [Process(**p) for p in raw["processes"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{path}: not a dev-cluster state file ({err})") from err

    def running(self) -> list[Process]:
        return [p for p in self.processes if process_identity(p.pid) == p.identity]


def process_identity(pid: int) -> str | None:
    """Start time and command line of a live process (None if there is none, or it is a
    zombie): from /proc on Linux, else from `ps` (macOS), in full and in one time zone."""
    if PROC.is_dir():
        return _proc_identity(pid)
    answer = subprocess.run(
        ["ps", "-ww", "-o", "lstart=", "-o", "args=", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
    )
    text = answer.stdout.strip()
    return text if answer.returncode == 0 and text else None


def _proc_identity(pid: int) -> str | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        cmdline = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is field 3, starttime field 22.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return f"{fields[19]} {command}"


def stop_processes(state: ClusterState, timeout_s: float = 20.0) -> list[str]:
    """SIGTERM each of our live processes, last started first, SIGKILL after
    `timeout_s`; the names of those stopped."""
    stopped = []
    for proc in reversed(state.running()):
        signal_process(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_identity(proc.pid) == proc.identity and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_identity(proc.pid) == proc.identity:
            signal_process(proc, signal.SIGKILL)
        stopped.append(proc.name)
    return stopped


def signal_process(proc: Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)


def remove_files(directory: Path, names: list[str], created_dir: bool) -> None:
    """`names` (what `up` wrote), the state file, and the directory if `up` made it and
    it is empty now."""
    for name in [*names, STATE_FILE]:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if created_dir and directory.exists() and not any(directory.iterdir()):
        directory.rmdir()
