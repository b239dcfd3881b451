"""Fake GPU nodes and pods for a KWOK cluster, and the admin-side calls that create them.

A fake node carries what GPU Feature Discovery and the NVIDIA device plugin would put on
a real one (`nvidia.com/gpu.product`, `.count`, `.present` labels; `nvidia.com/gpu`
capacity) and KWOK's taint `kwok.x-k8s.io/node=fake:NoSchedule`, which keeps ordinary
pods off nodes where nothing really runs: a pod meant for them tolerates it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.kube.kubeapi import KubeApi, load_config
from controller.kube.objects import GPU_MILLI, GPU_MODELS, RUNTIME, SCHEDULER_NAME
from policies import MILLI, NodeSpec, TaskRequest
from policies.gpu_models import FAMILIES, node_model

FAKE = "kwok.x-k8s.io/node"
"""KWOK's annotation (which nodes it manages) and taint key."""
TOLERATE_FAKE = {"key": FAKE, "operator": "Exists", "effect": "NoSchedule"}
FLEET_LABEL = "gpufleet.io/fake"
"""On every node and pod made here, so they can be found and removed together."""
NAMESPACE = "default"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

GFD_PRODUCTS = {
    "K80": "Tesla-K80",
    "P100": "Tesla-P100-PCIE-16GB",
    "V100": "Tesla-V100-SXM2-16GB",
    "T4": "Tesla-T4",
    "A10": "NVIDIA-A10",
    "A30": "NVIDIA-A30",
    "A100": "NVIDIA-A100-SXM4-40GB",
    "L4": "NVIDIA-L4",
    "L40S": "NVIDIA-L40S",
    "H100": "NVIDIA-H100-80GB-HBM3",
    "H200": "NVIDIA-H200",
}
"""A GPU model's product name as GPU Feature Discovery reports a common variant of it."""


def gfd_product(model: str) -> str:
    """`A100` → `NVIDIA-A100-SXM4-40GB`; a full product name is kept as given."""
    known = GFD_PRODUCTS.get(model.upper())
    if known:
        return known
    if node_model(model) != model and node_model(model).lower() in FAMILIES:
        return model
    raise ValueError(
        f"unknown GPU model {model!r}: give one of {', '.join(GFD_PRODUCTS)} "
        "or a product name as GPU Feature Discovery reports it (e.g. NVIDIA-A100-80GB-PCIe)"
    )


def gpu_nodes(count: int, gpus: int, models: Sequence[str]) -> list[NodeSpec]:
    """`count` nodes of `gpus` GPUs each, the models in turn, sized like a DGX per GPU
    (16 cores, 128 GiB)."""
    products = [gfd_product(m) for m in models]
    width = len(str(count - 1))
    return [
        NodeSpec(
            f"gpu-node-{i:0{width}d}",
            16_000 * gpus,
            131_072 * gpus,
            gpus,
            node_model(products[i % len(products)]),
            gpu_product=products[i % len(products)],
        )
        for i in range(count)
    ]


def node_manifest(spec: NodeSpec, tainted: bool = True) -> dict[str, Any]:
    """A KWOK-managed fake node with the spec's CPU, memory, GPUs, GPU product and
    taints (KWOK's own first, unless `tainted` is off)."""
    resources = {
        "cpu": f"{spec.cpu_milli}m",
        "memory": f"{spec.mem_mib}Mi",
        "pods": "1000",
        "nvidia.com/gpu": str(spec.gpus),
    }
    labels = {FLEET_LABEL: "true", "type": "kwok", **spec.labels}
    if spec.gpus:
        labels[GPU_PRODUCT_LABEL] = spec.product
        labels["nvidia.com/gpu.count"] = str(spec.gpus)
        labels["nvidia.com/gpu.present"] = "true"
    taints = [{"key": t.key, "value": t.value, "effect": t.effect} for t in spec.taints]
    if tainted:
        taints.insert(0, {"key": FAKE, "value": "fake", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels, "annotations": {FAKE: "fake"}},
        "spec": {"taints": taints},
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
    """A pod for the fake nodes: it tolerates KWOK's taint and, given a `runtime` (a Go
    duration), finishes that long after it starts (deploy/kwok/stages.yaml)."""
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
        "tolerations": [TOLERATE_FAKE],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {FLEET_LABEL: "true", **(labels or {})},
            "annotations": notes,
        },
        "spec": spec,
    }


class Admin:
    """Calls made as cluster admin: creating fake nodes and pods, binding as another
    scheduler would, emptying the cluster again."""

    def __init__(self, kubeconfig: str, timeout_s: float = 30.0) -> None:
        self.api = KubeApi(load_config(kubeconfig), timeout_s=timeout_s, connections=32)

    async def close(self) -> None:
        await self.api.close()

    async def create_nodes(self, specs: Iterable[NodeSpec], tainted: bool = True) -> None:
        await _bounded(
            self.api.call("POST", "/api/v1/nodes", body=node_manifest(s, tainted)) for s in specs
        )

    async def ready_nodes(self) -> set[str]:
        nodes, _ = await self.api.list_all("/api/v1/nodes")
        return {
            n["metadata"]["name"]
            for n in nodes
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        }

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
        """Delete every pod in the default namespace and every fake node."""
        await self.api.request(
            "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods", params={"gracePeriodSeconds": "0"}
        )
        await self.api.request(
            "DELETE", "/api/v1/nodes", params={"labelSelector": f"{FLEET_LABEL}=true"}
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
