"""The API client: raw JSON over aiohttp for every call, the `kubernetes` package for
where the server, TLS material and credentials come from.

By hand, for speed: `KubeApi.request`, `list_all` and `watch`. Decoding thousands of pods
into a typed client's models is slow, and both popular clients raise on the Binding
subresource's answer *after* the server has bound the pod (reference kubernetes.md §1.3).
Here every call returns the HTTP status and the decoded JSON, and callers decide what a
status means.

From the package (`kubernetes.config`, which fills a `kubernetes.client.Configuration`):
kubeconfig files (`$KUBECONFIG` lists merged, named contexts, client certificates inline or
as files, `token`, `tokenFile`, `exec` credential plugins as EKS, GKE and AKS use them, the
OIDC auth-provider as far as the package supports it, username/password) and in-cluster
service-account config. The CA and client certificate become one `ssl.SSLContext` at load
time. The Authorization header is set on each request by `Credentials`, an aiohttp client
middleware that caches the header and every `refresh_s` asks the package's refresh hook,
which re-runs an exec plugin from five minutes before its token expires and re-reads the
in-cluster token file once a minute. A 401 makes it load the credentials anew (a rotated
or revoked token, an expired OIDC id-token) and send the request once more.

Not covered: client certificates that an exec plugin returns are read once, at load time;
a cluster's `proxy-url` and `tls-server-name` are ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.client_middlewares import ClientHandlerType

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
REFRESH_S = 10.0
"""How often the package's refresh hook is asked (the hook decides whether anything is due)."""
RENEW_MIN_S = 5.0
"""Least time between two loads after a 401, so that credentials the server refuses for
good do not run an exec plugin on every request."""
WATCH_READ_MARGIN_S = 30.0
UNAUTHORIZED = 401
NO_KUBECONFIG = (
    "no kubeconfig at {path}: pass --kubeconfig PATH or set KUBECONFIG "
    "(in a pod, the service account is used when KUBERNETES_SERVICE_HOST is set)"
)

Configuration = Any
"""A `kubernetes.client.Configuration` (the package has no type hints)."""


class ApiError(Exception):
    """A call answered with a status the caller did not expect."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        message = body.get("message", "") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"{what}: HTTP {status} {message}".strip())
        self.status = status
        self.body = body


class Credentials:
    """The Authorization header for every request, kept fresh through the package.

    `load` fills a new Configuration (a kubeconfig read or the in-cluster files), and is
    called again after a 401. Between loads, the Configuration's refresh hook is asked at
    most every `refresh_s`, in a thread (it may run an exec plugin or call an OIDC issuer);
    in between, a request costs one clock read.
    """

    def __init__(self, load: Callable[[], Configuration], refresh_s: float = REFRESH_S) -> None:
        self._load = load
        self._refresh_s = refresh_s
        self._renew_after = -math.inf
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._adopt(load())

    @property
    def header(self) -> str | None:
        """The Authorization value as last loaded or refreshed (None: send none)."""
        return self._header

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """As aiohttp client middleware: authorize the request; after a 401, send it once
        more with renewed credentials (authentication comes before anything is done, so
        repeating is safe, even for a POST)."""
        sent = await self.authorization()
        _authorize(request, sent)
        response = await handler(request)
        if response.status == UNAUTHORIZED and await self.renew(sent):
            response.release()
            _authorize(request, self._header)
            response = await handler(request)
        return response

    async def authorization(self) -> str | None:
        """The current header, refreshed through the package's hook when due."""
        if time.monotonic() >= self._due:
            async with self._guard():
                if time.monotonic() >= self._due:
                    await self._in_thread(self._refresh, "refresh")
        return self._header

    async def renew(self, rejected: str | None) -> bool:
        """After the server refused `rejected`: load the credentials anew, once for all
        the requests refused together and at most every RENEW_MIN_S. True when the
        header is no longer the refused one."""
        async with self._guard():
            if self._header == rejected and time.monotonic() >= self._renew_after:
                self._renew_after = time.monotonic() + RENEW_MIN_S
                await self._in_thread(lambda: self._adopt(self._load()), "reload")
        return self._header != rejected

    def _adopt(self, configuration: Configuration) -> None:
        # Freshly loaded: nothing to refresh yet (the package keeps "Bearer " in the key).
        self.configuration = configuration
        self._take(configuration.api_key.get("BearerToken"))

    def _refresh(self) -> None:
        # The package runs its refresh hook here, then hands back the header value.
        self._take(self.configuration.get_api_key_with_prefix("BearerToken"))

    def _take(self, value: str | None) -> None:
        self._header = value.strip() if value else None
        self._due = time.monotonic() + self._refresh_s

    async def _in_thread(self, step: Callable[[], None], what: str) -> None:
        # A failure keeps the current header, which may still be valid; it is tried again
        # when next due. Any error: the package raises whatever its plugins raise.
        try:
            await asyncio.to_thread(step)
        except Exception as err:
            log.warning("credentials %s failed (%s); keeping the current ones", what, err)
            self._due = time.monotonic() + self._refresh_s

    def _guard(self) -> asyncio.Lock:
        # One refresh at a time. A config may serve several event loops one after another
        # (asyncio.run twice), and a lock, once waited on, belongs to one.
        loop = asyncio.get_running_loop()
        if loop is not self._lock_loop:
            self._lock_loop, self._lock = loop, asyncio.Lock()
        return self._lock


def _authorize(request: aiohttp.ClientRequest, header: str | None) -> None:
    if header:
        request.headers["Authorization"] = header
    else:
        request.headers.pop("Authorization", None)


@dataclass(frozen=True)
class ApiConfig:
    server: str
    ssl_context: ssl.SSLContext | None = None
    credentials: Credentials | None = None

    @property
    def token(self) -> str:
        """The bearer token as last loaded ('' without one)."""
        header = self.credentials.header if self.credentials else None
        scheme, _, token = (header or "").partition(" ")
        return token if scheme.lower() == "bearer" else ""


def load_config(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    refresh_s: float = REFRESH_S,
) -> ApiConfig:
    """The given kubeconfig (and context); without either, the in-cluster service account
    when running in a pod, else `$KUBECONFIG` or `~/.kube/config`."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster_config(refresh_s=refresh_s)
    path = kubeconfig or os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config"
    return kubeconfig_config(path, context, refresh_s=refresh_s)


def in_cluster_config(
    service_account_dir: Path | None = None, *, refresh_s: float = REFRESH_S
) -> ApiConfig:
    """The pod's service account: KUBERNETES_SERVICE_HOST/PORT, and `token` and `ca.crt` in
    `service_account_dir` (default SERVICE_ACCOUNT_DIR). The token file is re-read once a
    minute and after a 401, so projected tokens can rotate."""
    directory = service_account_dir or SERVICE_ACCOUNT_DIR

    def load() -> Configuration:
        from kubernetes.client import Configuration
        from kubernetes.config.incluster_config import InClusterConfigLoader

        configuration = Configuration()
        loader = InClusterConfigLoader(str(directory / "token"), str(directory / "ca.crt"))
        loader.load_and_set(configuration)
        return configuration

    return _api_config(_credentials(load, refresh_s, f"in-cluster config ({directory})"))


def kubeconfig_config(
    path: str | os.PathLike[str], context: str | None = None, *, refresh_s: float = REFRESH_S
) -> ApiConfig:
    """The named (default: current) context of a kubeconfig; `path` may list several
    files, separated as in `$KUBECONFIG`."""
    files = os.fspath(path)
    name, user = _context(files, context)

    def load() -> Configuration:
        from kubernetes.client import Configuration
        from kubernetes.config import load_kube_config

        configuration = Configuration()
        # persist_config=False: never write refreshed tokens into the user's file.
        load_kube_config(files, name, configuration, persist_config=False)
        return configuration

    credentials = _credentials(load, refresh_s, f"kubeconfig {files}")
    if "exec" in user and not credentials.header and not credentials.configuration.cert_file:
        raise ValueError(
            f"kubeconfig {files}: the exec credential plugin {user['exec'].get('command')!r} "
            f"of context {name!r} gave no credential (its error is logged above)"
        )
    return _api_config(credentials)


def _context(files: str, context: str | None) -> tuple[str, dict[str, Any]]:
    """The context's name and its user entry; a clear error for a missing file or context."""
    from kubernetes.config.kube_config import KubeConfigMerger

    merged = KubeConfigMerger(files).config
    if merged is None:
        raise ValueError(NO_KUBECONFIG.format(path=files))
    doc = merged.value
    name = context or doc.get("current-context")
    # The merged lists hold the package's ConfigNode wrappers; `.value` is the entry.
    contexts = {node.value["name"]: node.value for node in doc.get("contexts") or ()}
    if name not in contexts:
        have = ", ".join(map(repr, contexts)) or "none"
        raise ValueError(f"kubeconfig {files} has no context named {name!r} (it has {have})")
    users = {node.value["name"]: node.value for node in doc.get("users") or ()}
    user = users.get((contexts[name].get("context") or {}).get("user"), {})
    return str(name), dict(user.get("user") or {})


def _credentials(load: Callable[[], Configuration], refresh_s: float, where: str) -> Credentials:
    from kubernetes.config.config_exception import ConfigException

    try:
        return Credentials(load, refresh_s)
    except (ConfigException, OSError) as err:
        raise ValueError(f"{where}: {err}") from err


def _api_config(credentials: Credentials) -> ApiConfig:
    configuration = credentials.configuration
    server = configuration.host.rstrip("/")
    if not server.startswith("https"):
        return ApiConfig(server, None, credentials)
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return ApiConfig(server, context, credentials)


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
            # The Authorization header is set per request, so a rotated credential is used.
            middlewares = (self.config.credentials,) if self.config.credentials else ()
            connector = aiohttp.TCPConnector(
                limit=self._connections, ssl=self.config.ssl_context or False
            )
            self._session = aiohttp.ClientSession(
                self.config.server, headers=headers, connector=connector, middlewares=middlewares
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
        # Whole seconds, at least one: "0" would ask the server for its default (30 to 60
        # minutes), and a quiet watch would then break on the read timeout below.
        seconds = max(1, int(timeout_s))
        query = {**params, "watch": "1", "timeoutSeconds": str(seconds)}
        # Reads may wait past the server's timeout, so the server always ends the stream.
        read_s = seconds + WATCH_READ_MARGIN_S
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_s)
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
