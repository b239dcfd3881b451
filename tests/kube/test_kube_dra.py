"""Dynamic Resource Allocation on the real apiserver (1.37, resource.k8s.io/v1): the
tests publish ResourceSlices for KWOK nodes (acting as the driver), pods ask for GPUs
through claim templates and shared claims, and gpufleet allocates, reserves and binds
as kube-scheduler would; kube-controller-manager makes the claims from templates and
cleans up after the pods."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.kube.controlplane import ControlPlane
from tests.kube.dra_helpers import (
    DraAdmin,
    allocated_devices,
    class_manifest,
    dra_node,
    dra_pod,
    gpu_device,
    request,
    slice_manifest,
    template_manifest,
)
from tests.kube.helpers import NAMESPACE, Admin, RunningController, eventually

pytestmark = pytest.mark.kube

A100 = "NVIDIA A100-SXM4-80GB"
T4 = "Tesla T4"
PRODUCT = "device.attributes['gpu.nvidia.com'].productName"


def run(kube: ControlPlane, scenario: Callable[[Admin, DraAdmin], Awaitable[None]]) -> None:
    async def main() -> None:
        admin = Admin(str(kube.admin_kubeconfig))
        dra = DraAdmin(admin)
        try:
            await scenario(admin, dra)
        finally:
            await dra.reset()
            await admin.close()

    asyncio.run(main())


async def two_nodes(admin: Admin, dra: DraAdmin, shareable: bool = False) -> None:
    """`a100-node`: four 80 GiB A100s; `t4-node`: four 16 GiB T4s."""
    for name, product, memory in (("a100-node", A100, "80Gi"), ("t4-node", T4, "16Gi")):
        await admin.api.call("POST", "/api/v1/nodes", body=dra_node(name))
        devices = [gpu_device(i, product, memory, shareable) for i in range(4)]
        await dra.create(slice_manifest(name, devices))
    await dra.create(class_manifest())


async def bound_pod(admin: Admin, name: str, timeout_s: float = 30.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        pod = await admin.pod(name)
        return pod if pod and pod["spec"].get("nodeName") else None

    return dict(await eventually(check, timeout_s, f"pod {name} bound"))


def test_template_claim_allocated_bound_and_freed(kube: ControlPlane) -> None:
    """Two GPUs of a product from a template: exactly two matching devices of one node,
    written in kube-scheduler's order (finalizer, allocation + reservation, bind);
    deleting the pod frees them for the next pod, which waited meanwhile."""

    async def scenario(admin: Admin, dra: DraAdmin) -> None:
        await two_nodes(admin, dra)
        await dra.create(
            template_manifest("two-t4", request(count=2, selectors=[f"{PRODUCT} == '{T4}'"]))
        )
        await dra.create(
            template_manifest("four-t4", request(count=4, selectors=[f"{PRODUCT} == '{T4}'"]))
        )
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            await admin.create_pod(dra_pod("first", template="two-t4"))
            pod = await bound_pod(admin, "first")
            assert pod["spec"]["nodeName"] == "t4-node"
            claim = await dra.claim_of(pod)
            assert claim is not None
            devices = allocated_devices(claim)
            assert len(devices) == 2 and len(set(devices)) == 2
            assert {pool for pool, _ in devices} == {"t4-node"}
            status = claim["status"]
            assert status["allocation"]["nodeSelector"]["nodeSelectorTerms"][0]["matchFields"][0][
                "values"
            ] == ["t4-node"]
            assert status["allocation"].get("allocationTimestamp")
            assert [r["uid"] for r in status["reservedFor"]] == [pod["metadata"]["uid"]]
            assert "resource.kubernetes.io/delete-protection" in claim["metadata"]["finalizers"]

            # The next pod needs all four T4s: two are held, so it waits.
            await admin.create_pod(dra_pod("second", template="four-t4"))
            await ctl.settle()
            await asyncio.sleep(2)
            second = await admin.pod("second")
            assert second is not None and not second["spec"].get("nodeName")

            await admin.delete_pod("first")
            second = await bound_pod(admin, "second", timeout_s=60)
            assert second["spec"]["nodeName"] == "t4-node"
            claim = await dra.claim_of(second)
            assert claim is not None
            assert sorted(d for _, d in allocated_devices(claim)) == [f"gpu-{i}" for i in range(4)]

            async def first_claim_gone() -> bool:
                names = [c["metadata"]["name"] for c in await dra.claims()]
                return not any(n.startswith("first-gpu-") for n in names)

            await eventually(first_claim_gone, 60, "the first pod's claim deleted")

    run(kube, scenario)


def test_selectors_on_memory_and_product_and_a_malformed_one(kube: ControlPlane) -> None:
    async def scenario(admin: Admin, dra: DraAdmin) -> None:
        await two_nodes(admin, dra)
        memory = "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0"
        await dra.create(template_manifest("big", request(selectors=[memory])))
        await dra.create(
            template_manifest("t4", request(selectors=[f"{PRODUCT}.startsWith('Tesla')"]))
        )
        # The apiserver refuses selectors that do not compile; this one compiles and
        # fails on every device (an attribute no device has), as Kubernetes evaluates it.
        broken = "device.attributes['gpu.nvidia.com'].cudaCores > 1000"
        await dra.create(template_manifest("broken", request(selectors=[broken])))
        async with RunningController(str(kube.scheduler_kubeconfig)):
            await admin.create_pod(dra_pod("big-memory", template="big"))
            await admin.create_pod(dra_pod("tesla", template="t4"))
            await admin.create_pod(dra_pod("bad", template="broken"))
            assert (await bound_pod(admin, "big-memory"))["spec"]["nodeName"] == "a100-node"
            assert (await bound_pod(admin, "tesla"))["spec"]["nodeName"] == "t4-node"

            async def event_for_bad() -> list[str]:
                items, _ = await admin.api.list_all(
                    f"/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events"
                )
                return [
                    e["note"]
                    for e in items
                    if e["regarding"]["name"] == "bad" and e["reason"] == "FailedScheduling"
                ]

            notes = await eventually(event_for_bad, 30, "an Event for the malformed selector")
            assert "resourceclaims/bad-gpu-" in notes[0] and "cudaCores" in notes[0]
            bad = await admin.pod("bad")
            assert bad is not None and not bad["spec"].get("nodeName")

    run(kube, scenario)
