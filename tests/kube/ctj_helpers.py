"""Shared by the ContinualTrainingJob tests on the real API server: deploy/ applied once
per control plane with a kubeconfig for the controller's ServiceAccount
(controller.devcluster.install), CTJ manifests, a fixture that deletes the test's
CTJs before the cluster is reset, and the controller run as deployed (`ServeProcess`,
`serving`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.ctj.crd import API_VERSION, KIND, object_path
from controller.devcluster.fleet import NAMESPACE, TOLERATE_FAKE, Admin
from controller.devcluster.install import SYSTEM_NAMESPACE, install_deploy
from controller.devcluster.launcher import REPO, ControlPlane, free_port, tied_to_starter
from controller.kube.kubeapi import KubeApi, load_config
from tests.kube.helpers import eventually

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


FAST_LEASE = ("--lease-duration=3", "--renew-deadline=2", "--retry-period=0.5")


class ServeProcess:
    """The controller process as deployed, with its metrics port and JSON log."""

    def __init__(
        self,
        env: CtjEnvironment,
        log_path: Path,
        policy: str = "bestfit",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        args = [
            *tied_to_starter(),  # a killed test run leaves no controller behind
            sys.executable,
            "-m",
            "controller.serve",
            "serve",
            f"--policy={policy}",
            f"--kubeconfig={env.sa_kubeconfig}",
            f"--metrics-address=127.0.0.1:{self.port}",
            "--lease-namespace=gpufleet-system",
            "--log-format=json",
            *FAST_LEASE,
            *extra,
        ]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def get(self, path: str) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""
        except OSError:
            return 0, ""

    async def until_ready(self) -> None:
        async def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            return self.get("/readyz")[0] == 200

        await eventually(ready, timeout_s=30, what="the controller's /readyz")

    def scrape(self) -> dict[str, float]:
        """Every sample as `name{label="value",...}` → value."""
        status, text = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def log_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]


@asynccontextmanager
async def serving(
    env: CtjEnvironment, log_path: Path, policy: str = "bestfit", extra: tuple[str, ...] = ()
) -> AsyncIterator[ServeProcess]:
    """The controller process (`ServeProcess`), ready; stopped however the block ends."""
    serve = ServeProcess(env, log_path, policy, extra)
    try:
        await serve.until_ready()
        yield serve
    finally:
        serve.stop()


def run(env: CtjEnvironment, scenario: Callable[[Admin], Awaitable[None]]) -> None:
    """`scenario` on its own event loop with an admin client, closed however it ends."""

    async def main() -> None:
        admin = Admin(str(env.plane.admin_kubeconfig))
        try:
            await scenario(admin)
        finally:
            await admin.close()

    asyncio.run(main())
