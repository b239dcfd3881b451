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

from controller.devcluster.fleet import NAMESPACE, Admin
from controller.devcluster.launcher import ControlPlane
from controller.dra.allocator import ClaimOutcome, ClaimWriter
from controller.dra.inventory import ClaimAllocation
from controller.dra.objects import AllocatedDevice, claim_from_json, node_selector_for
from controller.kube.objects import pod_from_json
from tests.kube.dra_helpers import (
    DRIVER,
    RESOURCE,
    SHARING,
    DraAdmin,
    allocated_devices,
    claim_manifest,
    class_manifest,
    dra_node,
    dra_pod,
    gpu_device,
    request,
    slice_manifest,
    template_manifest,
)
from tests.kube.helpers import RunningController, eventually

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
    """`a100-node`: four 80 GiB A100s; `t4-node`: four 16 GiB T4s; the class carries
    opaque driver parameters."""
    for name, product, memory in (("a100-node", A100, "80Gi"), ("t4-node", T4, "16Gi")):
        await admin.api.call("POST", "/api/v1/nodes", body=dra_node(name))
        devices = [gpu_device(i, product, memory, shareable) for i in range(4)]
        await dra.create(slice_manifest(name, devices))
    await dra.create(class_manifest(parameters=SHARING))


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
            # The class's driver parameters go with the allocation, as kube-scheduler does.
            assert status["allocation"]["devices"]["config"] == [
                {
                    "source": "FromClass",
                    "requests": ["gpu"],
                    "opaque": {"driver": DRIVER, "parameters": SHARING},
                }
            ]
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


def test_fgd_packs_capacity_shares_within_each_device(kube: ControlPlane) -> None:
    """Claims for 40 GiB of shareable 80 GiB A100s (consumable capacity, 500 milli-GPU
    each): FGD packs the first five onto three devices (it fills a device before it
    opens another, as it does in the simulator), and of nine only eight are placed: a
    device's allocated capacity never exceeds its own."""

    async def scenario(admin: Admin, dra: DraAdmin) -> None:
        await two_nodes(admin, dra, shareable=True)
        await dra.create(template_manifest("part", request(capacity={"memory": "40Gi"})))
        async with RunningController(str(kube.scheduler_kubeconfig), policy="fgd") as ctl:
            names = [f"share-{i}" for i in range(9)]
            for name in names[:5]:
                await admin.create_pod(dra_pod(name, template="part"))
            pods = [await bound_pod(admin, n) for n in names[:5]]
            claims = [await dra.claim_of(p) for p in pods]
            used = {d for c in claims if c for d in allocated_devices(c)}
            assert {pool for pool, _ in used} == {"a100-node"}
            assert len(used) == 3
            for name in names[5:]:
                await admin.create_pod(dra_pod(name, template="part"))

            async def placed() -> list[str]:
                records = [(await admin.pod(n)) or {} for n in names]
                return [r["metadata"]["name"] for r in records if r["spec"].get("nodeName")]

            # Which of the four late pods stays out is not fixed: a pod can be placed only
            # once kube-controller-manager has made its claim from the template, and it
            # makes them in its own order.
            async def eight_placed() -> bool:
                return len(await placed()) == 8

            await eventually(eight_placed, 60.0, "eight pods placed")
            await ctl.settle()
            await asyncio.sleep(2)
            assert len(await placed()) == 8
            consumed: dict[tuple[str, str], int] = {}
            for claim in await dra.claims():
                allocation = (claim.get("status") or {}).get("allocation")
                for result in (allocation or {}).get("devices", {}).get("results", ()):
                    assert result["shareID"]
                    assert result["consumedCapacity"]["memory"] in ("40Gi", str(40 * 2**30))
                    key = (result["pool"], result["device"])
                    consumed[key] = consumed.get(key, 0) + 40
            assert sum(consumed.values()) == 8 * 40
            assert max(consumed.values()) <= 80

    run(kube, scenario)


def test_claim_allocated_by_another_writer_first_wins_and_the_loser_replans(
    kube: ControlPlane,
) -> None:
    """A second scheduler allocates the shared claim between gpufleet's finalizer write
    and its status write: gpufleet's write conflicts, nothing of its plan lands, and it
    plans again, following the winner's allocation (only reserving). A second pod that
    shares the claim joins it on the same node, and no device is allocated twice."""

    async def scenario(admin: Admin, dra: DraAdmin) -> None:
        await two_nodes(admin, dra)
        await dra.create(claim_manifest("shared", request()))
        async with RunningController(str(kube.scheduler_kubeconfig)) as ctl:
            raced = []

            async def other_writer_first(planned: Any) -> None:
                if raced:
                    return
                raced.append(planned.node)
                claim = await dra.claim("shared")
                assert claim is not None
                other = "t4-node" if planned.node == "a100-node" else "a100-node"
                claim["status"] = {
                    "allocation": {
                        "devices": {
                            "results": [
                                {
                                    "request": "gpu",
                                    "driver": DRIVER,
                                    "pool": other,
                                    "device": "gpu-3",
                                }
                            ]
                        },
                        "nodeSelector": node_selector_for(other),
                    }
                }
                await admin.api.call(
                    "PUT",
                    f"{RESOURCE}/namespaces/{NAMESPACE}/resourceclaims/shared/status",
                    body=claim,
                )

            ctl.scheduler.claims.before_write = other_writer_first
            await admin.create_pod(dra_pod("racer", claim="shared"))
            pod = await bound_pod(admin, "racer")
            assert raced, "the race was not staged"
            winner = "t4-node" if raced[0] == "a100-node" else "a100-node"
            assert pod["spec"]["nodeName"] == winner
            claim = await dra.claim("shared")
            assert claim is not None
            assert allocated_devices(claim) == [(winner, "gpu-3")]
            assert ctl.scheduler.stats.conflicts >= 1

            await admin.create_pod(dra_pod("sharer", claim="shared"))
            sharer = await bound_pod(admin, "sharer")
            assert sharer["spec"]["nodeName"] == winner
            claim = await dra.claim("shared")
            assert claim is not None
            reserved = {r["name"] for r in claim["status"]["reservedFor"]}
            assert reserved == {"racer", "sharer"}
            assert allocated_devices(claim) == [(winner, "gpu-3")]
            await ctl.settle()
            # gpu-3 of the winner's node is charged once, for the claim, not per pod.
            state = ctl.cache.ledger.state
            index = state.node_index[winner]
            assert int(state.gpu_free[index].sum()) == 3000

    run(kube, scenario)


def test_a_shared_claim_outlives_its_pods_deallocated(kube: ControlPlane) -> None:
    """kube-controller-manager's rules after the pods go: the claim's reservation is
    removed, its allocation cleared (the finalizer gpufleet added allows it) and the
    finalizer dropped; the claim itself stays, and the next pod gets it allocated anew."""

    async def scenario(admin: Admin, dra: DraAdmin) -> None:
        await two_nodes(admin, dra)
        await dra.create(claim_manifest("kept", request(count=2)))
        async with RunningController(str(kube.scheduler_kubeconfig)):
            await admin.create_pod(dra_pod("user", claim="kept"))
            await bound_pod(admin, "user")
            await admin.delete_pod("user")

            async def released() -> dict[str, Any] | None:
                claim = await dra.claim("kept")
                status = (claim or {}).get("status") or {}
                finalizers = (claim or {}).get("metadata", {}).get("finalizers")
                idle = not status.get("reservedFor") and not status.get("allocation")
                return claim if claim and idle and not finalizers else None

            await eventually(released, 60, "the claim deallocated and unprotected")
            await admin.create_pod(dra_pod("next", claim="kept"))
            await bound_pod(admin, "next")
            claim = await dra.claim("kept")
            assert claim is not None and len(allocated_devices(claim)) == 2

    run(kube, scenario)


def test_unreserve_takes_the_pod_out_and_clears_an_allocation_nobody_holds(
    kube: ControlPlane,
) -> None:
    """The rollback after a failed bind, against the real server: the strategic-merge
    patch removes the pod's reservation, and the allocation gpufleet wrote is cleared
    once no pod holds the claim (the pod here waits for another scheduler, so
    kube-controller-manager leaves its reservation alone)."""

    async def scenario(admin: Admin, dra: DraAdmin) -> None:
        await two_nodes(admin, dra)
        await dra.create(claim_manifest("probe", request()))
        manifest = dra_pod("waiting", claim="probe")
        manifest["spec"]["schedulerName"] = "someone-else"
        pod = pod_from_json(await admin.create_pod(manifest))
        claim = claim_from_json(await dra.claim("probe") or {})
        result = AllocatedDevice("gpu", DRIVER, "a100-node", "gpu-1")
        planned = ClaimAllocation(claim, "a100-node", (result,))
        writer = ClaimWriter(admin.api)
        outcome, written = await writer.reserve(pod, [planned], 1_800_000_000.0)
        assert outcome is ClaimOutcome.RESERVED and written == [planned]
        held = await dra.claim("probe")
        assert held is not None
        assert allocated_devices(held) == [("a100-node", "gpu-1")]
        assert [r["uid"] for r in held["status"]["reservedFor"]] == [pod.uid]
        assert held["status"]["allocation"]["allocationTimestamp"] == "2027-01-15T08:00:00Z"
        await writer.unreserve(pod, written)
        freed = await dra.claim("probe")
        assert freed is not None
        assert not freed["status"].get("reservedFor") and not freed["status"].get("allocation")

    run(kube, scenario)
