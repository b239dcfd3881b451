"""Manifests and admin-side calls shared by the real-apiserver tests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from controller.kubeapi import KubeApi, load_config
from controller.objects import GPU_MILLI, GPU_MODELS, RUNTIME, SCHEDULER_NAME
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
        labels["nvidia.com/gpu.product"] = spec.gpu_model
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
