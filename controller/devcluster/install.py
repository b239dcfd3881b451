"""deploy/ applied to a cluster (server-side apply, each kind's path found by
discovery, as `kubectl apply --server-side -k deploy/` does) and a kubeconfig that
authenticates as the controller's ServiceAccount (a TokenRequest, what the kubelet
mounts into the controller's pod), so a controller run outside the cluster has exactly
the deployed rights."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from controller.ctj.crd import GROUP, PLURAL
from controller.devcluster.fleet import NAMESPACE
from controller.devcluster.pki import kubeconfig
from controller.kube.kubeapi import KubeApi

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SYSTEM_NAMESPACE = "gpufleet-system"
SERVICE_ACCOUNT = "gpufleet-controller"
APPLY_PATCH = "application/apply-patch+yaml"


def deploy_documents() -> list[dict[str, Any]]:
    """Every object the kustomization lists, in its order."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((DEPLOY / resource).read_text()) if d)
    return docs


class Applier:
    """Server-side apply of arbitrary manifests, finding each kind's path by discovery."""

    def __init__(self, api: KubeApi, field_manager: str = "gpufleet-dev-cluster") -> None:
        self.api = api
        self.field_manager = field_manager
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}

    async def apply(self, doc: dict[str, Any], dry_run: bool = False) -> tuple[int, Any]:
        path = await self.path(doc)
        params = {"fieldManager": self.field_manager, "force": "true"}
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


async def install_deploy(api: KubeApi, server: str, ca: bytes, kubeconfig_path: Path) -> None:
    """Apply deploy/, wait for the CRD to be established, and write a kubeconfig for the
    controller's ServiceAccount to `kubeconfig_path`."""
    applier = Applier(api)
    for doc in deploy_documents():
        status, answer = await applier.apply(doc)
        if status not in (200, 201):
            raise RuntimeError(f"apply {doc['kind']} {doc['metadata']['name']}: {answer}")
    await _until_established(api)
    token = await service_account_token(api)
    kubeconfig_path.write_text(kubeconfig(server, ca, SERVICE_ACCOUNT, {"token": token}))


async def _until_established(api: KubeApi) -> None:
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}"
    for _ in range(300):
        crd = await api.call("GET", path)
        conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
        if conditions.get("Established") == "True":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the ContinualTrainingJob CRD was not established within 30 s")


async def service_account_token(api: KubeApi, expiration_s: int = 7200) -> str:
    """A TokenRequest for the controller's ServiceAccount."""
    path = f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": expiration_s},
    }
    answer = await api.call("POST", path, body=body)
    return str(answer["status"]["token"])
