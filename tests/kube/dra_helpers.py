"""DRA objects for the real-apiserver tests: the tests act as the driver, publishing
ResourceSlices for KWOK nodes, and create DeviceClasses and claim templates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controller.devcluster.fleet import FLEET_LABEL as TEST_LABEL
from controller.devcluster.fleet import NAMESPACE, Admin, pod_manifest
from policies import TaskRequest

DRIVER = "gpu.nvidia.com"
RESOURCE = "/apis/resource.k8s.io/v1"
GPU_CLASS = "gpu.nvidia.com"


def dra_node(name: str) -> dict[str, Any]:
    """A KWOK node without device-plugin GPUs (its GPUs are published as a slice)."""
    resources = {"cpu": "32", "memory": "128Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {TEST_LABEL: "true", "type": "kwok"},
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {
            "taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]
        },
        "status": {"capacity": resources, "allocatable": resources},
    }


def gpu_device(index: int, product: str, memory: str, shareable: bool = False) -> dict[str, Any]:
    capacity: dict[str, Any] = {"value": memory}
    if shareable:
        capacity["requestPolicy"] = {"default": memory, "validRange": {"min": "1Gi", "step": "1Gi"}}
    device: dict[str, Any] = {
        "name": f"gpu-{index}",
        "attributes": {
            "type": {"string": "gpu"},
            "productName": {"string": product},
            "uuid": {"string": f"GPU-{index:04d}"},
        },
        "capacity": {"memory": capacity},
    }
    if shareable:
        device["allowMultipleAllocations"] = True
    return device


def slice_manifest(
    node: str, devices: Iterable[dict[str, Any]], generation: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-gpus", "labels": {TEST_LABEL: "true"}},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "devices": list(devices),
        },
    }


SHARING = {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig", "sharing": {}}
"""Opaque driver parameters a class may carry (copied into allocations)."""


def class_manifest(
    name: str = GPU_CLASS, extended: str = "", parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selectors": [
            {
                "cel": {
                    "expression": f"device.driver == '{DRIVER}' && "
                    f"device.attributes['{DRIVER}'].type == 'gpu'"
                }
            }
        ]
    }
    if extended:
        spec["extendedResourceName"] = extended
    if parameters is not None:
        spec["config"] = [{"opaque": {"driver": DRIVER, "parameters": parameters}}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}},
        "spec": spec,
    }


def request(
    name: str = "gpu",
    count: int = 1,
    selectors: Iterable[str] = (),
    capacity: Mapping[str, str] | None = None,
    all_devices: bool = False,
) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": GPU_CLASS}
    if all_devices:
        exactly["allocationMode"] = "All"
    else:
        exactly["count"] = count
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    if capacity:
        exactly["capacity"] = {"requests": dict(capacity)}
    return {"name": name, "exactly": exactly}


def template_manifest(name: str, *requests: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}},
        "spec": {"spec": {"devices": {"requests": list(requests)}}},
    }


def claim_manifest(name: str, *requests: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}},
        "spec": {"devices": {"requests": list(requests)}},
    }


def dra_pod(
    name: str, *, template: str = "", claim: str = "", cpu_milli: int = 1000
) -> dict[str, Any]:
    """A pod asking for GPUs through one claim: from `template`, or the shared `claim`."""
    manifest = pod_manifest(name, TaskRequest(cpu_milli, 1024))
    source = {"resourceClaimTemplateName": template} if template else {"resourceClaimName": claim}
    manifest["spec"]["resourceClaims"] = [{"name": "gpu", **source}]
    manifest["spec"]["containers"][0]["resources"]["claims"] = [{"name": "gpu"}]
    return manifest


class DraAdmin:
    """Admin calls on DRA objects (the test is the driver and the cluster operator)."""

    def __init__(self, admin: Admin) -> None:
        self.api = admin.api

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        plural = {
            "ResourceSlice": "resourceslices",
            "DeviceClass": "deviceclasses",
            "ResourceClaimTemplate": "resourceclaimtemplates",
            "ResourceClaim": "resourceclaims",
        }[manifest["kind"]]
        namespaced = manifest["kind"] in ("ResourceClaimTemplate", "ResourceClaim")
        where = (
            f"{RESOURCE}/namespaces/{NAMESPACE}/{plural}" if namespaced else f"{RESOURCE}/{plural}"
        )
        return dict(await self.api.call("POST", where, body=manifest))

    async def claims(self) -> list[dict[str, Any]]:
        items, _ = await self.api.list_all(f"{RESOURCE}/namespaces/{NAMESPACE}/resourceclaims")
        return items

    async def claim(self, name: str) -> dict[str, Any] | None:
        status, body = await self.api.request(
            "GET", f"{RESOURCE}/namespaces/{NAMESPACE}/resourceclaims/{name}"
        )
        return body if status == 200 else None

    async def claim_of(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        """The claim made for the pod's `gpu` entry (from its resourceClaimStatuses)."""
        for entry in (pod.get("status") or {}).get("resourceClaimStatuses") or ():
            if entry.get("name") == "gpu" and entry.get("resourceClaimName"):
                return await self.claim(entry["resourceClaimName"])
        return None

    async def reset(self) -> None:
        """Delete the DRA objects the tests made (pods are deleted by Admin.reset)."""
        for plural in ("resourceclaimtemplates", "resourceclaims"):
            await self.api.request("DELETE", f"{RESOURCE}/namespaces/{NAMESPACE}/{plural}")
        for plural in ("resourceslices", "deviceclasses"):
            await self.api.request(
                "DELETE", f"{RESOURCE}/{plural}", params={"labelSelector": f"{TEST_LABEL}=true"}
            )


def allocated_devices(claim: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(pool, device) of each allocated result."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or ()
    return [(r["pool"], r["device"]) for r in results]
