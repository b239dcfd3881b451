"""Controller replicas run against a local cluster, and what they did: the real-apiserver
tests and the benchmarks start `serve` replicas, read their metrics and watch binds
through these."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controller.devcluster.fleet import NAMESPACE
from controller.kube.kubeapi import KubeApi

REPO = Path(__file__).resolve().parents[2]


class BindWatcher:
    """Watches the default namespace's pods and notes when each is first seen bound
    (wall clock), so a test or benchmark can react to binds as they happen."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.bound_at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        path = f"/api/v1/namespaces/{NAMESPACE}/pods"
        _, version = await self.api.list_all(path)
        while True:
            params = {"resourceVersion": version, "allowWatchBookmarks": "true"}
            async for event in self.api.watch(path, params, 300):
                obj = event["object"]
                version = obj["metadata"].get("resourceVersion", version)
                name = obj["metadata"].get("name", "")
                if obj.get("spec", {}).get("nodeName") and name not in self.bound_at:
                    self.bound_at[name] = time.time()
                    self.changed.set()

    async def wait_for(self, names: set[str], timeout_s: float) -> None:
        await self.wait_until(lambda: names <= self.bound_at.keys(), timeout_s, names)

    async def wait_until(
        self, done: Callable[[], bool], timeout_s: float, names: set[str] | None = None
    ) -> None:
        """Until `done()` holds, re-checked after each newly bound pod."""
        deadline = time.monotonic() + timeout_s
        while not done():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                missing = f"{len(names - self.bound_at.keys())} pods" if names else "pods"
                raise TimeoutError(f"{missing} still unbound after {timeout_s:.0f}s")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                continue


Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric(samples: Metrics, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


class ServeReplica:
    """One controller replica as the Deployment runs it: `python -m controller.serve
    serve ...` in its own process (and process group), metrics and probes on a port of
    127.0.0.1, logs to a file."""

    def __init__(self, args: list[str], metrics_port: int, log: Path) -> None:
        self.args = args
        self.port = metrics_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "controller.serve", "serve", *self.args]
        command += ["--metrics-address", f"127.0.0.1:{self.port}"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    async def get(self, path: str) -> tuple[int, str]:
        """(status, body) of a probe path; (0, reason) when nothing answers."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
            ):
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            return 0, repr(err)

    async def metrics(self) -> Metrics:
        status, text = await self.get("/metrics")
        if status != 200:
            return {}
        return {
            (sample.name, frozenset(sample.labels.items())): float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def identity_if_leading(self) -> str | None:
        """This replica's identity while its `gpufleet_leader` gauge is 1."""
        for (name, labels), value in (await self.metrics()).items():
            if name == "gpufleet_leader" and value == 1.0:
                return dict(labels)["identity"]
        return None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
