"""Shared by the ContinualTrainingJob tests on the real API server: deploy/ applied once
per control plane with a kubeconfig for the controller's ServiceAccount
(controller.devcluster.install), CTJ manifests, and a fixture that deletes the test's
CTJs before the cluster is reset."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import API_VERSION, KIND, object_path
from controller.devcluster.fleet import NAMESPACE, TOLERATE_FAKE, Admin
from controller.devcluster.install import SYSTEM_NAMESPACE, install_deploy
from controller.devcluster.launcher import ControlPlane
from controller.kube.kubeapi import KubeApi, load_config

CTJS = f"/apis/{API_VERSION}/namespaces/{NAMESPACE}/continualtrainingjobs"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NAMESPACE}/leases/gpufleet-controller"


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
    path = plane.dir / "ctj-controller.kubeconfig"
    try:
        await install_deploy(admin.api, plane.server, plane.pki.ca_pem, path)
    finally:
        await admin.close()
    return CtjEnvironment(plane, path)


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
        "tolerations": [TOLERATE_FAKE],
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
