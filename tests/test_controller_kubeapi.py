"""Credentials through the `kubernetes` package and the watch timeouts, against a small
local API server (aiohttp) that checks the Authorization header and client certificates."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import sys
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controller.devcluster.pki import Pki
from controller.kube import kubeapi
from controller.kube.informer import Informer
from controller.kube.kubeapi import ApiConfig, KubeApi, load_config

EXEC_API = "client.authentication.k8s.io/v1"
NODES = "/api/v1/nodes"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


class FakeApiserver:
    """GET and WATCH of nodes. An Authorization value not in `accepted` (None: any) gets a
    401; `seen` keeps every value sent, `clients` the client certificates' common names."""

    def __init__(self, accepted: set[str] | None = None, tls: ssl.SSLContext | None = None):
        self.accepted = accepted
        self.tls = tls
        self.seen: list[str | None] = []
        self.clients: list[str] = []
        self.watch_timeouts: list[int] = []
        app = web.Application()
        app.router.add_get(NODES, self.nodes)
        self.server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> FakeApiserver:
        await self.server.start_server(ssl=self.tls)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.server.close()

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def nodes(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        self.seen.append(header)
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            self.clients.append(dict(field[0] for field in peer["subject"])["commonName"])
        if self.accepted is not None and header not in self.accepted:
            status = {"kind": "Status", "code": 401, "message": "Unauthorized"}
            return web.json_response(status, status=401)
        if "watch" in request.query:
            return await self._watch(request)
        return web.json_response({"items": [], "metadata": {"resourceVersion": "1"}})

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        seconds = int(request.query["timeoutSeconds"])
        self.watch_timeouts.append(seconds)
        response = web.StreamResponse()
        await response.prepare(request)
        # Like kube-apiserver: 0 means its own default, 30 to 60 minutes.
        await asyncio.sleep(seconds or 1800)
        return response


async def get_nodes(config: ApiConfig, times: int = 1) -> list[int]:
    api = KubeApi(config)
    try:
        return [(await api.request("GET", NODES))[0] for _ in range(times)]
    finally:
        await api.close()


def write_kubeconfig(
    directory: Path,
    server: str,
    users: Mapping[str, Mapping[str, Any]],
    cluster: Mapping[str, Any] | None = None,
) -> Path:
    """One cluster and one context per user, named after it; the first is current."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": name, "user": dict(user)} for name, user in users.items()],
        "contexts": [{"name": n, "context": {"cluster": "test", "user": n}} for n in users],
        "current-context": next(iter(users)),
    }
    path = directory / "kubeconfig"
    path.write_text(json.dumps(doc))
    return path


@dataclass(frozen=True)
class ExecPlugin:
    """A credential plugin script that prints an ExecCredential: its n-th run hands out
    the n-th token (the last one from then on), expiring `expires_in_s` after the run."""

    command: Path
    log: Path

    @property
    def runs(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    @property
    def user(self) -> dict[str, Any]:
        return {"exec": {"apiVersion": EXEC_API, "command": str(self.command)}}


def exec_plugin(directory: Path, tokens: list[str], expires_in_s: float) -> ExecPlugin:
    log = directory / "plugin-runs.log"
    command = directory / "credential-plugin"
    command.write_text(
        f"""#!{sys.executable}
import datetime, json, pathlib
log = pathlib.Path({str(log)!r})
runs = len(log.read_text().splitlines()) if log.exists() else 0
with log.open("a") as out:
    out.write("run\\n")
tokens = {tokens!r}
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={expires_in_s})
status = {{"token": tokens[min(runs, len(tokens) - 1)],
          "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}
print(json.dumps({{"apiVersion": {EXEC_API!r}, "kind": "ExecCredential", "status": status}}))
"""
    )
    command.chmod(0o755)
    return ExecPlugin(command, log)


@dataclass(frozen=True)
class Tls:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for 'alice'."""

    pki: Pki
    server_cert: tuple[Path, Path]
    client_cert: tuple[bytes, bytes]

    @classmethod
    def create(cls, directory: Path) -> Tls:
        pki = Pki.create()
        cert, key = pki.issue("apiserver", server=True)
        (directory / "server.crt").write_bytes(cert)
        (directory / "server.key").write_bytes(key)
        client = pki.issue("alice")
        return cls(pki, (directory / "server.crt", directory / "server.key"), client)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*map(str, self.server_cert))
        context.load_verify_locations(cadata=self.pki.ca_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
        return context


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- kubeconfig variants ---------------------------------------------------------------


@pytest.mark.parametrize("user", [{"token": "s3cret"}, {"tokenFile": "token"}])
def test_token_and_token_file_are_sent_as_bearer(tmp_path: Path, user: dict[str, str]) -> None:
    (tmp_path / "token").write_text("s3cret\n")

    async def scenario() -> None:
        async with FakeApiserver({"Bearer s3cret"}) as server:
            config = load_config(write_kubeconfig(tmp_path, server.url, {"u": user}))
            assert config.token == "s3cret"
            assert await get_nodes(config) == [200]

    run(scenario())


@pytest.mark.parametrize("inline", [True, False], ids=["data", "files"])
def test_client_certificate_and_ca_inline_or_as_files(tmp_path: Path, inline: bool) -> None:
    tls = Tls.create(tmp_path)
    cert, key = tls.client_cert
    if inline:
        user = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
        cluster = {"certificate-authority-data": b64(tls.pki.ca_pem)}
    else:
        (tmp_path / "alice.crt").write_bytes(cert)
        (tmp_path / "alice.key").write_bytes(key)
        (tmp_path / "ca.crt").write_bytes(tls.pki.ca_pem)
        user = {"client-certificate": "alice.crt", "client-key": "alice.key"}
        cluster = {"certificate-authority": "ca.crt"}

    async def scenario() -> None:
        async with FakeApiserver(tls=tls.server_context()) as server:
            path = write_kubeconfig(tmp_path, server.url, {"alice": user}, cluster)
            config = load_config(path)
            assert config.token == ""
            assert await get_nodes(config) == [200]
            assert server.seen == [None] and server.clients == ["alice"]

    run(scenario())


def test_insecure_skip_tls_verify_trusts_an_unknown_ca(tmp_path: Path) -> None:
    tls = Tls.create(tmp_path)
    user = {"u": {"token": "t"}}

    async def scenario() -> None:
        async with FakeApiserver(tls=tls.server_context()) as server:
            trusting = write_kubeconfig(
                tmp_path, server.url, user, {"insecure-skip-tls-verify": True}
            )
            assert await get_nodes(load_config(trusting)) == [200]
            checking = write_kubeconfig(tmp_path, server.url, user)
            with pytest.raises(
                aiohttp.ClientConnectorCertificateError, match="certificate verify failed"
            ):
                await get_nodes(load_config(checking))

    run(scenario())


def test_named_contexts(tmp_path: Path) -> None:
    users = {"a": {"token": "ta"}, "b": {"token": "tb"}}
    path = write_kubeconfig(tmp_path, "http://127.0.0.1:1", users)
    assert load_config(path).token == "ta"
    assert load_config(path, context="b").token == "tb"
    with pytest.raises(ValueError, match=r"has no context named 'c' \(it has 'a', 'b'\)"):
        load_config(path, context="c")


def test_kubeconfig_list_is_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_kubeconfig(tmp_path, "http://127.0.0.1:1", {"a": {"token": "ta"}})
    other = tmp_path / "other"
    other.mkdir()
    second = write_kubeconfig(other, "http://127.0.0.1:2", {"b": {"token": "tb"}})
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{first}:{second}")
    assert load_config(context="b").token == "tb"


def test_missing_kubeconfig_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"^no kubeconfig at {missing}: pass --kubeconfig"):
        load_config(missing)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(ValueError, match="or set KUBECONFIG"):
        load_config()


def test_oidc_id_token_is_sent(tmp_path: Path) -> None:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    id_token = f"{part({'alg': 'none'})}.{part({'exp': int(time.time()) + 3600})}.sig"
    provider = {"name": "oidc", "config": {"id-token": id_token, "client-id": "gpufleet"}}
    path = write_kubeconfig(tmp_path, "http://127.0.0.1:1", {"u": {"auth-provider": provider}})
    assert load_config(path).token == id_token


def test_username_and_password_are_sent_as_basic(tmp_path: Path) -> None:
    users = {"u": {"username": "alice", "password": "pw"}}
    config = load_config(write_kubeconfig(tmp_path, "http://127.0.0.1:1", users))
    assert config.credentials is not None
    assert config.credentials.header == f"Basic {b64(b'alice:pw')}"
    assert config.token == ""


# -- exec plugins ----------------------------------------------------------------------


def test_exec_plugin_token_is_kept_until_near_expiry(tmp_path: Path) -> None:
    plugin = exec_plugin(tmp_path, ["first", "second"], expires_in_s=3600)

    async def scenario() -> None:
        async with FakeApiserver({"Bearer first"}) as server:
            path = write_kubeconfig(tmp_path, server.url, {"u": plugin.user})
            config = load_config(path, refresh_s=0.05)
            for _ in range(3):
                await asyncio.sleep(0.1)
                assert await get_nodes(config) == [200]
            assert plugin.runs == 1  # the hook was asked three times and found nothing due

    run(scenario())


def test_expiring_exec_token_is_fetched_again(tmp_path: Path) -> None:
    # Inside the package's five-minute margin: due at every refresh.
    plugin = exec_plugin(tmp_path, ["first", "second"], expires_in_s=120)

    async def scenario() -> None:
        async with FakeApiserver({"Bearer first", "Bearer second"}) as server:
            path = write_kubeconfig(tmp_path, server.url, {"u": plugin.user})
            config = load_config(path, refresh_s=0.2)
            assert await get_nodes(config, times=2) == [200, 200]
            await asyncio.sleep(0.3)
            assert await get_nodes(config) == [200]
            assert server.seen == ["Bearer first", "Bearer first", "Bearer second"]
            assert plugin.runs == 2

    run(scenario())


def test_failing_exec_plugin_is_one_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = tmp_path / "needs-login"
    command.write_text("#!/bin/sh\necho 'run cloud login first' >&2\nexit 1\n")
    command.chmod(0o755)
    user = {"exec": {"apiVersion": EXEC_API, "command": str(command)}}
    path = write_kubeconfig(tmp_path, "http://127.0.0.1:1", {"eks": user})
    with pytest.raises(
        ValueError, match=r"exec credential plugin '.*needs-login' of context 'eks'"
    ):
        load_config(path)
    assert "run cloud login first" in caplog.text


# -- rotation and refusal --------------------------------------------------------------


def test_rotated_token_file_is_read_again_after_a_401(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old")

    async def scenario() -> None:
        async with FakeApiserver({"Bearer old"}) as server:
            config = load_config(
                write_kubeconfig(tmp_path, server.url, {"u": {"tokenFile": "token"}})
            )
            api = KubeApi(config)
            try:
                assert (await api.request("GET", NODES))[0] == 200
                token.write_text("new")
                server.accepted = {"Bearer new"}
                status, body = await api.request("GET", NODES)
                assert status == 200, body
            finally:
                await api.close()
            assert server.seen == ["Bearer old", "Bearer old", "Bearer new"]
            assert config.token == "new"

    run(scenario())


def test_refused_credentials_are_reloaded_once_for_many_requests(tmp_path: Path) -> None:
    plugin = exec_plugin(tmp_path, ["refused"], expires_in_s=3600)

    async def scenario() -> None:
        async with FakeApiserver(set()) as server:
            config = load_config(write_kubeconfig(tmp_path, server.url, {"u": plugin.user}))
            api = KubeApi(config)
            try:
                answers = await asyncio.gather(*(api.request("GET", NODES) for _ in range(5)))
                answers += [await api.request("GET", NODES) for _ in range(5)]
            finally:
                await api.close()
            assert [status for status, _ in answers] == [401] * 10
            assert plugin.runs == 2  # the load, and one reload for all the 401s

    run(scenario())


def in_cluster_dir(directory: Path, tls: Tls, token: str) -> Path:
    directory.mkdir()
    (directory / "ca.crt").write_bytes(tls.pki.ca_pem)
    (directory / "token").write_text(token)
    return directory


def test_in_cluster_token_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = Tls.create(tmp_path)
    account = in_cluster_dir(tmp_path / "serviceaccount", tls, "first")

    async def scenario() -> None:
        async with FakeApiserver({"bearer first"}, tls.server_context()) as server:
            monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server.port))
            monkeypatch.setattr(kubeapi, "SERVICE_ACCOUNT_DIR", account)
            config = load_config()
            assert config.server == server.url
            api = KubeApi(config)
            try:
                assert (await api.request("GET", NODES))[0] == 200
                (account / "token").write_text("second")
                server.accepted = {"bearer second"}
                assert (await api.request("GET", NODES))[0] == 200
            finally:
                await api.close()
            assert server.seen == ["bearer first", "bearer first", "bearer second"]

    run(scenario())


def test_in_cluster_without_a_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ValueError, match=f"in-cluster config \\({tmp_path}\\): .*token file"):
        kubeapi.in_cluster_config(tmp_path)


def test_the_package_is_not_asked_on_every_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with FakeApiserver() as server:
            config = load_config(write_kubeconfig(tmp_path, server.url, {"u": {"token": "t"}}))
            assert config.credentials is not None
            configuration = config.credentials.configuration
            hook, asked = configuration.refresh_api_key_hook, []
            configuration.refresh_api_key_hook = lambda c: asked.append(hook(c))
            assert await get_nodes(config, times=50) == [200] * 50
            assert asked == []

    run(scenario())


# -- watch timeouts ----------------------------------------------------------------------


def test_watch_asks_whole_seconds_and_never_zero() -> None:
    async def scenario() -> None:
        async with FakeApiserver() as server:
            api = KubeApi(ApiConfig(server.url))
            try:
                async for _ in api.watch(NODES, {}, 0.4):
                    pass
            finally:
                await api.close()
            assert server.watch_timeouts == [1]

    run(scenario())


def test_informer_resyncs_on_time_without_broken_watches(caplog: pytest.LogCaptureFixture) -> None:
    """Left with under a second before the resync, the informer used to ask for
    `timeoutSeconds=0` (the server's 30-60 minutes) with a read timeout of ~30 s: every
    quiet watch then broke once per resync period."""

    class Ignore:
        def replace(self, kind: str, objects: list[dict[str, Any]]) -> None: ...

        def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None: ...

    async def scenario() -> None:
        async with FakeApiserver() as server:
            api = KubeApi(ApiConfig(server.url))
            informer = Informer(api, "nodes", NODES, Ignore(), resync_s=1.5, watch_timeout_s=1)
            task = asyncio.create_task(informer.run())
            try:
                await asyncio.wait_for(informer.wait_until(lambda: informer.lists >= 3), 4)
            finally:
                task.cancel()
                await api.close()
            assert 0 not in server.watch_timeouts

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert "watch broke" not in caplog.text
