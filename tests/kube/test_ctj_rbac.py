"""Least privilege on the real API server: the controller authenticates as its
ServiceAccount (not as admin), verbs outside deploy/rbac stay forbidden, and a full
run — scheduling (a DRA pod among them), CTJ windows completed and missed, leader
election — makes only calls the rules grant, while every granted rule is used (bar
documented rare paths). Writing a claim's allocation needs `resourceclaims/binding`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import yaml

from controller.devcluster.fleet import Admin, pod_manifest
from controller.devcluster.install import DEPLOY, SERVICE_ACCOUNT, SYSTEM_NAMESPACE
from controller.kube.kubeapi import KubeApi, load_config
from controller.kube.leader import LeaseConfig
from controller.manager import Manager, ManagerOptions
from policies import NodeSpec, TaskRequest, make_policy
from tests.kube.ctj_helpers import (
    CTJS,
    LEASE,
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    get_ctj,
    run,
)
from tests.kube.dra_helpers import (
    RESOURCE,
    DraAdmin,
    claim_manifest,
    class_manifest,
    dra_node,
    dra_pod,
    gpu_device,
    request,
    slice_manifest,
    template_manifest,
)
from tests.kube.helpers import eventually

pytestmark = pytest.mark.kube

Call = tuple[str, str, str, str]
"""(API group, resource[/subresource], verb, object name)."""
RARELY_USED = {
    ("", "pods", "get"): "re-reading a pod after an unclear bind, and before an eviction",
    ("ctj.gpufleet.io", "continualtrainingjobs", "get"): "after a status conflict, and to "
    "confirm a CTJ is gone before deleting its pods",
    ("resource.k8s.io", "resourceclaims/status", "patch"): "unreserving a claim after a "
    "failed bind",
    ("resource.k8s.io", "resourceclaims/binding", "update"): "never called: it authorizes "
    "writing allocation and reservedFor through status (test_claim_allocation_needs_binding)",
    ("resource.k8s.io", "resourceclaims/binding", "patch"): "never called: authorizes the "
    "unreserve patch of reservedFor",
}
CLUSTER_ROLE = "/apis/rbac.authorization.k8s.io/v1/clusterroles/gpufleet-controller"


class RecordingApi(KubeApi):
    """Notes every request and watch the controller makes, with the answer's status."""

    def __init__(self, kubeconfig: str) -> None:
        super().__init__(load_config(kubeconfig))
        self.calls: list[tuple[str, str, Mapping[str, str], int]] = []

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        status, body = await super().request(method, path, params=params, **kw)
        self.calls.append((method, path, dict(params or {}), status))
        return status, body

    async def watch(
        self, path: str, params: Mapping[str, str], timeout_s: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("WATCH", path, dict(params), 200))
        async for event in super().watch(path, params, timeout_s):
            yield event


def rbac_call(method: str, path: str) -> Call:
    """What RBAC sees in a request: group, resource, verb, name (namespace dropped)."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2:]
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "WATCH": "watch"}
    if method in verbs:
        verb = verbs[method]
    elif method == "GET":
        verb = "get" if name else "list"
    else:
        verb = "delete" if name else "deletecollection"
    return group, "/".join([resource, *sub]), verb, name


def granted_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "rbac" / "clusterrole.yaml").read_text())["rules"]
    for doc in yaml.safe_load_all((DEPLOY / "rbac" / "leader-election.yaml").read_text()):
        if doc["kind"] == "Role":
            rules += doc["rules"]
    return list(rules)


def permits(rule: Mapping[str, Any], call: Call) -> bool:
    group, resource, verb, name = call
    return (
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
    )


def test_controller_identity_and_forbidden_verbs(ctj_env: CtjEnvironment) -> None:  # noqa: F811
    async def scenario(_admin: Admin) -> None:
        api = ctj_env.sa_api()
        try:
            review = await api.call(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            )
            user = review["status"]["userInfo"]
            assert user["username"] == f"system:serviceaccount:{SYSTEM_NAMESPACE}:{SERVICE_ACCOUNT}"
            assert "system:masters" not in user.get("groups", [])
            forbidden = [
                ("DELETE", f"{CTJS}/any", None),
                ("PUT", f"{CTJS}/any", {"metadata": {"name": "any"}}),
                ("POST", "/api/v1/nodes", {"metadata": {"name": "rogue"}}),
                ("PATCH", "/api/v1/nodes/gpu-0", {}),
                ("GET", f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/secrets", None),
                ("PATCH", "/api/v1/namespaces/default/pods/any", {}),
                ("POST", "/api/v1/namespaces/default/pods/any/eviction", {}),
                ("DELETE", LEASE, None),
                ("GET", LEASE.replace("gpufleet-controller", "someone-elses"), None),
                ("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases", None),
                ("POST", f"{RESOURCE}/resourceslices", {"metadata": {"name": "rogue"}}),
                ("DELETE", f"{RESOURCE}/namespaces/default/resourceclaims/any", None),
                ("POST", f"{RESOURCE}/namespaces/default/resourceclaims", {}),
                ("PUT", f"{RESOURCE}/deviceclasses/any", {"metadata": {"name": "any"}}),
            ]
            for method, path, body in forbidden:
                kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
                status, answer = await api.request(method, path, body=body, content_type=kind)
                assert status == 403, f"{method} {path} answered {status}"
                assert "forbidden" in answer["message"]
            status, _ = await api.request("GET", "/api/v1/pods")
            assert status == 200  # the control: what the role grants works
        finally:
            await api.close()

    run(ctj_env, scenario)


def test_a_full_run_uses_exactly_the_granted_rules(ctj_env: CtjEnvironment) -> None:  # noqa: F811
    async def scenario(admin: Admin) -> None:
        await admin.api.request("DELETE", LEASE)  # so that creating the lease is exercised
        await admin.create_nodes([NodeSpec("gpu-0", 32_000, 131_072, 4, "A100")])
        dra = DraAdmin(admin)
        await admin.api.call("POST", "/api/v1/nodes", body=dra_node("dra-0"))
        await dra.create(slice_manifest("dra-0", [gpu_device(0, "NVIDIA A100-SXM4-80GB", "80Gi")]))
        await dra.create(class_manifest())
        await dra.create(template_manifest("one-gpu", request()))
        api = RecordingApi(str(ctj_env.sa_kubeconfig))
        lease = LeaseConfig(
            namespace=SYSTEM_NAMESPACE, lease_duration_s=3, renew_deadline_s=2, retry_period_s=0.5
        )
        manager = Manager(api, make_policy("bestfit"), ManagerOptions(lease=lease, probe_port=0))
        task = asyncio.create_task(manager.run())
        try:
            await asyncio.wait_for(manager.leading.wait(), 30)
            await create_ctj(admin.api, ctj_manifest("ok", windows=1))
            await create_ctj(admin.api, ctj_manifest("starved", windows=1, gpu_models=("H100",)))
            await admin.create_pod(pod_manifest("huge", TaskRequest(1000, 1024, 8, 1000)))
            await admin.create_pod(dra_pod("dra", template="one-gpu"))

            async def both_done() -> bool:
                jobs = [await get_ctj(admin.api, n) for n in ("ok", "starved")]
                completed = all(
                    (j or {}).get("status", {}).get("phase") == "Completed" for j in jobs
                )
                # The status is written before the missed window's pods are withdrawn.
                pods = {p["metadata"]["name"]: p for p in await admin.pods()}
                dra_bound = bool(pods.get("dra", {}).get("spec", {}).get("nodeName"))
                return completed and dra_bound and not any(n.startswith("starved-") for n in pods)

            await eventually(both_done, timeout_s=20, what="both CTJs done, pods withdrawn")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await api.close()
            await dra.reset()
        denied = [(m, p) for m, p, _, status in api.calls if status == 403]
        assert denied == []
        calls = {rbac_call(method, path) for method, path, _, _ in api.calls}
        rules = granted_rules()
        unpermitted = [c for c in calls if not any(permits(r, c) for r in rules)]
        assert unpermitted == []
        granted = {
            (g, r, v)
            for rule in rules
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }
        used = {(g, r, v) for g, r, v, _ in calls}
        assert granted - used <= set(RARELY_USED), granted - used - set(RARELY_USED)

    run(ctj_env, scenario)


def test_claim_allocation_needs_binding(ctj_env: CtjEnvironment) -> None:  # noqa: F811
    """Without `resourceclaims/binding` the ServiceAccount cannot write a claim's
    allocation through `status` (granular status authorization, on in 1.37: the server
    answers 422 naming the permission), with it it can: the rule is needed, not just
    granted."""

    async def scenario(admin: Admin) -> None:
        dra = DraAdmin(admin)
        await dra.create(claim_manifest("probe", request()))
        role = await admin.api.call("GET", CLUSTER_ROLE)
        kept = [r for r in role["rules"] if "resourceclaims/binding" not in r["resources"]]
        api = ctj_env.sa_api()
        path = f"{RESOURCE}/namespaces/default/resourceclaims/probe/status"

        async def allocate() -> str:
            claim = await api.call("GET", path.removesuffix("/status"))
            result = {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "p", "device": "d"}
            claim["status"] = {"allocation": {"devices": {"results": [result]}}}
            status, answer = await api.request("PUT", path, body=claim)
            needs = 'requires resource="resourceclaims/binding"' in str(answer)
            return "refused for binding" if status == 422 and needs else str(status)

        try:
            await admin.api.call("PUT", CLUSTER_ROLE, body={**role, "rules": kept})
            refused = "refused for binding"
            await eventually(lambda: _is(allocate(), refused), 20, "the write refused")
        finally:
            current = await admin.api.call("GET", CLUSTER_ROLE)
            await admin.api.call("PUT", CLUSTER_ROLE, body={**current, "rules": role["rules"]})
        try:
            await eventually(lambda: _is(allocate(), "200"), 20, "the write allowed again")
        finally:
            await api.close()
            await dra.reset()

    run(ctj_env, scenario)


async def _is(outcome: Any, expected: str) -> bool:
    return bool(await outcome == expected)
