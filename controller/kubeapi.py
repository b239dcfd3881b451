"""A small async client for the few API calls the scheduler makes, over raw JSON.

Typed clients are avoided on purpose: decoding thousands of pods into models is slow,
and both popular clients raise on the Binding subresource's answer *after* the server
has bound the pod (reference kubernetes.md §1.3). Here every call returns the HTTP status
and the decoded JSON, and callers decide what a status means.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A call answered with a status the caller did not expect."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        message = body.get("message", "") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"{what}: HTTP {status} {message}".strip())
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ApiConfig:
    server: str
    ssl_context: ssl.SSLContext | None = None
    token: str = ""


def load_config(kubeconfig: str | os.PathLike[str] | None = None) -> ApiConfig:
    """The given kubeconfig; without one, the in-cluster service account when running
    in a pod, else `$KUBECONFIG` or `~/.kube/config`."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster_config()
    path = kubeconfig or os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config"
    return kubeconfig_config(Path(path))


def in_cluster_config() -> ApiConfig:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
    server_host = f"[{host}]" if ":" in host else host
    return ApiConfig(f"https://{server_host}:{port}", context, token)


def kubeconfig_config(path: Path, context_name: str | None = None) -> ApiConfig:
    """Reads the current (or named) context: server, CA, client certificate or token."""
    doc = yaml.safe_load(path.read_text())
    base = path.parent
    name = context_name or doc.get("current-context")
    context = _named(doc.get("contexts"), name, "context")
    cluster = _named(doc.get("clusters"), context["cluster"], "cluster")
    user = _named(doc.get("users"), context.get("user", ""), "user") if "user" in context else {}
    server = cluster["server"].rstrip("/")
    if not server.startswith("https"):
        return ApiConfig(server, None, user.get("token", ""))
    ssl_context = _ssl_context(cluster, user, base)
    token = user.get("token", "")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    return ApiConfig(server, ssl_context, token)


def _named(entries: list[dict[str, Any]] | None, name: str | None, kind: str) -> dict[str, Any]:
    for entry in entries or ():
        if entry.get("name") == name:
            return dict(entry.get(kind) or {})
    raise ValueError(f"kubeconfig has no {kind} named {name!r}")


def _ssl_context(cluster: Mapping[str, Any], user: Mapping[str, Any], base: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        context.load_verify_locations(cadata=_pem(cluster["certificate-authority-data"]))
    elif cluster.get("certificate-authority"):
        context.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
    cert = _material(user, "client-certificate", base)
    key = _material(user, "client-key", base)
    if cert and key:
        _load_cert_chain(context, cert, key)
    return context


def _pem(data: str) -> str:
    return base64.b64decode(data).decode()


def _material(user: Mapping[str, Any], field: str, base: Path) -> str:
    """PEM text of a certificate or key given inline (`-data`) or as a file."""
    if user.get(f"{field}-data"):
        return _pem(user[f"{field}-data"])
    if user.get(field):
        return (base / user[field]).read_text()
    return ""


def _load_cert_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    # The ssl module only loads client certificates from files.
    with tempfile.TemporaryDirectory(prefix="gpufleet-tls-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_path.write_text(cert)
        key_path.touch(mode=0o600)
        key_path.write_text(key)
        context.load_cert_chain(str(cert_path), str(key_path))


class KubeApi:
    """One aiohttp session to the API server. Create and use it inside a running loop."""

    def __init__(self, config: ApiConfig, timeout_s: float = 30.0, connections: int = 64) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json", "User-Agent": "gpufleet-controller"}
            if self.config.token:
                headers["Authorization"] = f"Bearer {self.config.token}"
            connector = aiohttp.TCPConnector(
                limit=self._connections, ssl=self.config.ssl_context or False
            )
            self._session = aiohttp.ClientSession(
                self.config.server, headers=headers, connector=connector
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or text). Never raises on a status."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        async with self.session.request(
            method, path, params=params, data=data, headers=headers, timeout=self._timeout
        ) as response:
            text = await response.text()
            try:
                decoded = json.loads(text) if text else None
            except json.JSONDecodeError:
                decoded = text
            return response.status, decoded

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like `request`, but any status outside 2xx raises `ApiError`."""
        status, body = await self.request(method, path, **kwargs)
        if not 200 <= status < 300:
            raise ApiError(status, body, f"{method} {path}")
        return body

    async def list_all(
        self, path: str, params: Mapping[str, str] | None = None, page: int = 500
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item (following `continue` tokens) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        query = {**(params or {}), "limit": str(page)}
        while True:
            body = await self.call("GET", path, params=query)
            items.extend(body.get("items") or ())
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            query["continue"] = meta["continue"]

    async def watch(
        self, path: str, params: Mapping[str, str], timeout_s: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events as decoded dicts until the server ends the stream. An HTTP error
        (e.g. 410 when the resourceVersion is too old) raises `ApiError`."""
        query = {**params, "watch": "1", "timeoutSeconds": str(int(timeout_s))}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30)
        async with self.session.get(path, params=query, timeout=timeout) as response:
            if response.status != 200:
                text = await response.text()
                try:
                    body: Any = json.loads(text)
                except json.JSONDecodeError:
                    body = text
                raise ApiError(response.status, body, f"WATCH {path}")
            # Split lines ourselves: aiohttp's readline caps line length, objects do not.
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
