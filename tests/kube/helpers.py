"""Manifests and admin-side calls shared by the real-apiserver tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controller.kube.kubeapi import KubeApi, load_config
from controller.kube.objects import GPU_MILLI, GPU_MODELS, RUNTIME, SCHEDULER_NAME
from policies import MILLI, NodeSpec, TaskRequest

FAKE = "kwok.x-k8s.io/node"
TEST_LABEL = "gpufleet.io/test"
NAMESPACE = "default"


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    """A KWOK-managed fake node with the spec's CPU, memory, GPUs and GPU model."""
    resources = {
        "cpu": f"{spec.cpu_milli}m",
        "memory": f"{spec.mem_mib}Mi",
        "pods": "1000",
        "nvidia.com/gpu": str(spec.gpus),
    }
    labels = {TEST_LABEL: "true", "type": "kwok", **spec.labels}
    if spec.gpus:
        labels["nvidia.com/gpu.product"] = spec.product
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels, "annotations": {FAKE: "fake"}},
        "spec": {
            "taints": [
                {"key": FAKE, "value": "fake", "effect": "NoSchedule"},
                *({"key": t.key, "value": t.value, "effect": t.effect} for t in spec.taints),
            ]
        },
        "status": {"capacity": resources, "allocatable": resources},
    }


def pod_manifest(
    name: str,
    task: TaskRequest,
    *,
    allowed_models: Iterable[str] | None = None,
    runtime: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    scheduler: str = SCHEDULER_NAME,
    node_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    requests = {"cpu": f"{task.cpu_milli}m", "memory": f"{task.mem_mib}Mi"}
    limits = {"nvidia.com/gpu": str(task.num_gpus)} if task.num_gpus else {}
    notes = dict(annotations or {})
    if task.num_gpus == 1 and task.gpu_milli < MILLI:
        notes[GPU_MILLI] = str(task.gpu_milli)
    if allowed_models:
        notes[GPU_MODELS] = "|".join(sorted(allowed_models))
    if runtime:
        notes[RUNTIME] = runtime
    container = {
        "name": "main",
        "image": "fake",
        "resources": {"requests": requests, "limits": limits},
    }
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [container],
        "tolerations": [{"key": FAKE, "operator": "Exists", "effect": "NoSchedule"}],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {TEST_LABEL: "true", **(labels or {})},
            "annotations": notes,
        },
        "spec": spec,
    }


class Admin:
    """Calls made as cluster admin (test setup and the 'other schedulers')."""

    def __init__(self, kubeconfig: str, timeout_s: float = 30.0) -> None:
        self.api = KubeApi(load_config(kubeconfig), timeout_s=timeout_s, connections=32)

    async def close(self) -> None:
        await self.api.close()

    async def create_nodes(self, specs: Iterable[NodeSpec]) -> None:
        await _bounded(self.api.call("POST", "/api/v1/nodes", body=node_manifest(s)) for s in specs)

    async def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return dict(
            await self.api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=manifest)
        )

    async def delete_pod(self, name: str) -> None:
        """Force-delete (no grace period)."""
        await self.api.call(
            "DELETE",
            f"/api/v1/namespaces/{NAMESPACE}/pods/{name}",
            params={"gracePeriodSeconds": "0"},
        )

    async def pod(self, name: str) -> dict[str, Any] | None:
        status, body = await self.api.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
        return body if status == 200 else None

    async def pods(self) -> list[dict[str, Any]]:
        items, _ = await self.api.list_all(f"/api/v1/namespaces/{NAMESPACE}/pods")
        return items

    async def bind(self, name: str, node: str) -> int:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        status, _ = await self.api.request(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/binding", body=body
        )
        return status

    async def reset(self) -> None:
        """Delete every pod in the test namespace and every test node."""
        await self.api.request(
            "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods", params={"gracePeriodSeconds": "0"}
        )
        await self.api.request(
            "DELETE", "/api/v1/nodes", params={"labelSelector": f"{TEST_LABEL}=true"}
        )
        for _ in range(100):
            nodes, _ = await self.api.list_all("/api/v1/nodes")
            if not nodes and not await self.pods():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("test cluster did not empty")


async def _bounded(calls: Iterable[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


class RunningController:
    """`async with RunningController(kubeconfig, policy) as ctl:` runs the controller in
    this event loop (as the scheduler user, so RBAC applies) and stops it afterwards."""

    def __init__(
        self, kubeconfig: str, policy: str = "bestfit", server: str = "", **options: Any
    ) -> None:
        from controller.runtime import Controller, ControllerOptions
        from policies import make_policy

        config = load_config(kubeconfig)
        self.api = KubeApi(dataclasses.replace(config, server=server) if server else config)
        self.controller = Controller(self.api, make_policy(policy), ControllerOptions(**options))

    async def __aenter__(self) -> Any:
        await self.controller.start()
        return self.controller

    async def __aexit__(self, *_exc: object) -> None:
        await self.controller.stop()
        await self.api.close()


async def eventually(check: Any, timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll an async check until it returns a truthy value (API state has no push hook
    for tests; the controller itself never polls)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class BindWatcher:
    """Watches the test namespace's pods and notes when each is first seen bound
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
                cwd=Path(__file__).resolve().parents[2],
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
