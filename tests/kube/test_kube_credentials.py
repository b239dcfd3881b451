"""Credentials on the real API server: an exec credential plugin whose expiring token is
fetched again, and an in-cluster token file rotated under a running client. Tokens are
ServiceAccount tokens minted through the TokenRequest API, each bound to a Secret, so
deleting the Secret revokes it. Also: quiet watches end by the server's timeout, never by
the client's read timeout."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster.fleet import NAMESPACE, Admin
from controller.devcluster.launcher import ControlPlane
from controller.kube import kubeapi
from controller.kube.informer import Informer
from controller.kube.kubeapi import KubeApi, load_config
from policies import NodeSpec
from tests.kube.helpers import eventually
from tests.test_controller_kubeapi import b64, exec_plugin, write_kubeconfig

pytestmark = pytest.mark.kube

PREFIX = "gpufleet-credentials"
ROLE = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{PREFIX}"
BINDING = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{PREFIX}"
NODE = NodeSpec("credentials-node", 8000, 16_384, 1, "A100")


class Accounts:
    """ServiceAccounts allowed to read nodes, and revocable tokens for them."""

    def __init__(self, admin: Admin) -> None:
        self.api = admin.api
        self.names: list[str] = []

    async def create(self, *suffixes: str) -> None:
        self.names = [f"{PREFIX}-{s}" for s in suffixes]
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": PREFIX},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}],
        }
        subjects = [
            {"kind": "ServiceAccount", "name": n, "namespace": NAMESPACE} for n in self.names
        ]
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": PREFIX},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": PREFIX,
            },
            "subjects": subjects,
        }
        await self.api.call("POST", ROLE.rsplit("/", 1)[0], body=role)
        await self.api.call("POST", BINDING.rsplit("/", 1)[0], body=binding)
        for name in self.names:
            account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
            await self.api.call(
                "POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", body=account
            )
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
            await self.api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", body=secret)

    async def token(self, name: str) -> str:
        """A token for the account, bound to the Secret of the same name."""
        secret = await self.api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}")
        bound = {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": name,
            "uid": secret["metadata"]["uid"],
        }
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600, "boundObjectRef": bound},
        }
        path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{name}/token"
        return str((await self.api.call("POST", path, body=request))["status"]["token"])

    async def revoke(self, name: str) -> None:
        await self.api.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}")

    async def delete(self) -> None:
        for name in self.names:
            for kind in ("serviceaccounts", "secrets"):
                await self.api.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/{kind}/{name}")
        await self.api.request("DELETE", BINDING)
        await self.api.request("DELETE", ROLE)


def run(kube: ControlPlane, scenario: Callable[[Accounts], Awaitable[None]]) -> None:
    async def main() -> None:
        admin = Admin(str(kube.admin_kubeconfig))
        accounts = Accounts(admin)
        try:
            await admin.create_nodes([NODE])
            await accounts.create("one", "two")
            await scenario(accounts)
        finally:
            await accounts.delete()
            await admin.close()

    asyncio.run(main())


def user(name: str) -> str:
    return f"system:serviceaccount:{NAMESPACE}:{name}"


async def whoami(api: KubeApi) -> str:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    answer = await api.call(
        "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=review
    )
    return str(answer["status"]["userInfo"]["username"])


async def node_names(api: KubeApi) -> list[str]:
    nodes, _ = await api.list_all("/api/v1/nodes")
    return [n["metadata"]["name"] for n in nodes]


def test_exec_plugin_token_lists_nodes_and_is_fetched_again_near_expiry(
    kube: ControlPlane, tmp_path: Path
) -> None:
    async def scenario(accounts: Accounts) -> None:
        one, two = accounts.names
        # Expiring within the package's five-minute margin: due at every refresh.
        plugin = exec_plugin(tmp_path, [await accounts.token(one), await accounts.token(two)], 120)
        cluster = {"certificate-authority-data": b64(kube.pki.ca_pem)}
        path = write_kubeconfig(tmp_path, kube.server, {"eks": plugin.user}, cluster)
        api = KubeApi(load_config(path, refresh_s=1.0))
        try:
            assert await whoami(api) == user(one)
            assert await node_names(api) == [NODE.name]
            assert plugin.runs == 1
            await asyncio.sleep(1.1)
            assert await whoami(api) == user(two)
            assert await node_names(api) == [NODE.name]
            assert plugin.runs == 2
        finally:
            await api.close()

    run(kube, scenario)


def test_in_cluster_token_file_rotated_and_old_token_revoked(
    kube: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_dir = tmp_path / "serviceaccount"
    account_dir.mkdir()
    (account_dir / "ca.crt").write_bytes(kube.pki.ca_pem)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.api_port))
    monkeypatch.setattr(kubeapi, "SERVICE_ACCOUNT_DIR", account_dir)

    async def scenario(accounts: Accounts) -> None:
        one, two = accounts.names
        old, new = await accounts.token(one), await accounts.token(two)
        write_atomically(account_dir / "token", old)
        api = KubeApi(load_config())
        try:
            assert await whoami(api) == user(one)
            # As the kubelet rotates a projected token: the new file is renamed into place.
            write_atomically(account_dir / "token", new)
            await accounts.revoke(one)
            # The server caches accepted tokens for a few seconds.
            await eventually(lambda: refused(kube, tmp_path, old), what="old token refused")
            assert await whoami(api) == user(two)
            assert await node_names(api) == [NODE.name]
        finally:
            await api.close()

    run(kube, scenario)


def write_atomically(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


async def refused(kube: ControlPlane, directory: Path, token: str) -> bool:
    cluster = {"certificate-authority-data": b64(kube.pki.ca_pem)}
    path = write_kubeconfig(directory, kube.server, {"u": {"token": token}}, cluster)
    api = KubeApi(load_config(path))
    try:
        status, _ = await api.request("GET", "/api/v1/nodes")
    finally:
        await api.close()
    return status == 401


def test_quiet_watches_end_by_the_server_timeout(
    kube: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """With a second or less left before the resync, the informer once asked for
    `timeoutSeconds=0` (the server's own 30-60 minutes) under a ~30 s read timeout: every
    quiet watch broke once per resync period instead of resyncing on time."""

    class Ignore:
        def replace(self, kind: str, objects: list[dict[str, Any]]) -> None: ...

        def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None: ...

    async def main() -> None:
        api = KubeApi(load_config(kube.admin_kubeconfig))
        informer = Informer(
            api, "nodes", "/api/v1/nodes", Ignore(), resync_s=2.5, watch_timeout_s=2
        )
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.wait_until(lambda: informer.lists >= 3), 8)
        finally:
            task.cancel()
            await api.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert "watch broke" not in caplog.text
