"""Shared by the ContinualTrainingJob tests on the real API server: applying deploy/
(server-side apply through discovery), the controller's ServiceAccount token, CTJ
manifests, and a fixture that deletes the test's CTJs before the cluster is reset."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.ctj.crd import API_VERSION, GROUP, KIND, PLURAL, object_path
from controller.kube.kubeapi import KubeApi, load_config
from tests.kube.controlplane import REPO, ControlPlane
from tests.kube.helpers import FAKE, NAMESPACE, Admin

DEPLOY = REPO / "deploy"
SYSTEM_NAMESPACE = "gpufleet-system"
SERVICE_ACCOUNT = "gpufleet-controller"
APPLY_PATCH = "application/apply-patch+yaml"
CTJS = f"/apis/{API_VERSION}/namespaces/{NAMESPACE}/continualtrainingjobs"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NAMESPACE}/leases/gpufleet-controller"
TOLERATE_FAKE = [{"key": FAKE, "operator": "Exists", "effect": "NoSchedule"}]


def deploy_documents() -> list[dict[str, Any]]:
    """Every object the kustomization lists, in its order."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((DEPLOY / resource).read_text()) if d)
    return docs


class Applier:
    """Server-side apply of arbitrary manifests, finding each kind's path by discovery."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}

    async def apply(self, doc: dict[str, Any], dry_run: bool = False) -> tuple[int, Any]:
        path = await self.path(doc)
        params = {"fieldManager": "gpufleet-tests", "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        return await self.api.request(
            "PATCH", path, params=params, body=doc, content_type=APPLY_PATCH
        )

    async def path(self, doc: dict[str, Any]) -> str:
        version = doc["apiVersion"]
        plural, namespaced = (await self._discover(version))[doc["kind"]]
        base = f"/api/{version}" if version == "v1" else f"/apis/{version}"
        meta = doc["metadata"]
        where = f"/namespaces/{meta.get('namespace', NAMESPACE)}" if namespaced else ""
        return f"{base}{where}/{plural}/{meta['name']}"

    async def _discover(self, version: str) -> dict[str, tuple[str, bool]]:
        if version not in self._resources:
            base = "/api/v1" if version == "v1" else f"/apis/{version}"
            listing = await self.api.call("GET", base)
            self._resources[version] = {
                r["kind"]: (r["name"], r["namespaced"])
                for r in listing["resources"]
                if "/" not in r["name"]
            }
        return self._resources[version]


@dataclass(frozen=True)
class CtjEnvironment:
    plane: ControlPlane
    sa_kubeconfig: Path
    """Authenticates with the controller ServiceAccount's token (RBAC applies)."""

    def sa_api(self, server: str = "") -> KubeApi:
        config = load_config(str(self.sa_kubeconfig))
        if server:
            config = replace(config, server=server)
        return KubeApi(config)


_ENVIRONMENTS: dict[int, CtjEnvironment] = {}


def ctj_environment(plane: ControlPlane) -> CtjEnvironment:
    """deploy/ applied for real, the CRD established and a token minted: once per
    control plane (the session's), whichever CTJ test asks first."""
    if id(plane) not in _ENVIRONMENTS:
        _ENVIRONMENTS[id(plane)] = asyncio.run(_install(plane))
    return _ENVIRONMENTS[id(plane)]


async def _install(plane: ControlPlane) -> CtjEnvironment:
    admin = Admin(str(plane.admin_kubeconfig))
    try:
        applier = Applier(admin.api)
        for doc in deploy_documents():
            status, answer = await applier.apply(doc)
            assert status in (200, 201), f"apply {doc['kind']} {doc['metadata']['name']}: {answer}"
        await _until_established(admin.api)
        token = await _service_account_token(admin.api)
    finally:
        await admin.close()
    path = plane.dir / "ctj-controller.kubeconfig"
    path.write_text(_token_kubeconfig(plane.server, plane.pki.ca_pem, token))
    return CtjEnvironment(plane, path)


async def _until_established(api: KubeApi) -> None:
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}"
    for _ in range(100):
        crd = await api.call("GET", path)
        conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
        if conditions.get("Established") == "True":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the CRD was not established")


async def _service_account_token(api: KubeApi) -> str:
    """A TokenRequest for the controller's ServiceAccount (what the kubelet mounts)."""
    path = f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 7200},
    }
    answer = await api.call("POST", path, body=body)
    return str(answer["status"]["token"])


def _token_kubeconfig(server: str, ca: bytes, token: str) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": SERVICE_ACCOUNT}}],
        "current-context": "test",
    }
    return json.dumps(doc, indent=1)


def ctj_manifest(
    name: str,
    *,
    window_s: int = 5,
    deadline_s: int = 3,
    windows: int | None = None,
    runtime: str | None = "1s",
    replicas: int = 2,
    gpu_models: tuple[str, ...] = (),
    **spec: Any,
) -> dict[str, Any]:
    retrain: dict[str, Any] = {"windowSeconds": window_s, "deadlineSeconds": deadline_s}
    if windows is not None:
        retrain["windows"] = windows
    body: dict[str, Any] = {
        "image": "retrain:test",
        "retrain": retrain,
        "resources": {
            "gpu": {"count": 1},
            "cpu": "1",
            "memory": "1Gi",
            "gpuTypes": [{"model": m} for m in gpu_models],
        },
        "replicas": {"min": replicas},
        "tolerations": TOLERATE_FAKE,
        "podMetadata": {"annotations": {"gpufleet.io/sim-runtime": runtime} if runtime else {}},
        **spec,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": body,
    }


async def create_ctj(api: KubeApi, manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(await api.call("POST", CTJS, body=manifest))


async def get_ctj(api: KubeApi, name: str) -> dict[str, Any] | None:
    status, body = await api.request("GET", object_path(NAMESPACE, name))
    return body if status == 200 else None


async def delete_all_ctjs(api: KubeApi) -> None:
    await api.request("DELETE", CTJS)
    for _ in range(100):
        items, _ = await api.list_all(CTJS)
        if not items:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("ContinualTrainingJobs were not deleted")


@pytest.fixture
def ctj_env(kube: ControlPlane) -> Iterator[CtjEnvironment]:
    """The control plane with deploy/ applied; the test's CTJs are deleted afterwards
    (before the `kube` fixture deletes pods and nodes)."""
    env = ctj_environment(kube)
    yield env

    async def clean() -> None:
        admin = Admin(str(kube.admin_kubeconfig))
        try:
            await delete_all_ctjs(admin.api)
            await admin.api.request("DELETE", LEASE)
        finally:
            await admin.close()

    asyncio.run(clean())
