"""Informer semantics against a scripted HTTP server, and kubeconfig reading."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controller.devcluster.pki import Pki
from controller.kube.informer import Informer
from controller.kube.kubeapi import ApiConfig, KubeApi, kubeconfig_config


def pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": name, "resourceVersion": version}}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def replace(self, kind: str, objects: list[dict[str, Any]]) -> None:
        self.calls.append(("replace", *[o["metadata"]["name"] for o in objects]))

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        self.calls.append((event, obj["metadata"]["name"]))


def scripted_server(expire_with_status: bool) -> tuple[web.Application, list[str]]:
    """First list: A at 10. First watch: a bookmark, B added, then 410. Second list:
    A and C at 20 (B is gone). Second watch: stays open."""
    lists = iter([([pod("A", "9")], "10"), ([pod("A", "9"), pod("C", "19")], "20")])
    watched: list[str] = []

    async def pods(request: web.Request) -> web.StreamResponse:
        if "watch" not in request.query:
            items, version = next(lists)
            return web.json_response({"items": items, "metadata": {"resourceVersion": version}})
        watched.append(request.query["resourceVersion"])
        if len(watched) == 1 and expire_with_status:
            return web.json_response({"code": 410, "message": "too old"}, status=410)
        response = web.StreamResponse()
        await response.prepare(request)
        if len(watched) == 1:
            for event in (
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
                {"type": "ADDED", "object": pod("B", "13")},
                {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}},
            ):
                await response.write(json.dumps(event).encode() + b"\n")
            return response
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    return app, watched


@pytest.mark.parametrize("expire_with_status", [False, True], ids=["error-event", "http-410"])
def test_410_relists_and_replaces_the_cache(expire_with_status: bool) -> None:
    async def main() -> None:
        app, watched = scripted_server(expire_with_status)
        async with TestServer(app) as server:
            api = KubeApi(ApiConfig(str(server.make_url("")).rstrip("/")))
            handler = Recorder()
            informer = Informer(api, "pods", "/api/v1/pods", handler, retry_s=0.01)
            task = asyncio.create_task(informer.run())
            await asyncio.wait_for(informer.wait_for_version("20"), 5)
            await asyncio.wait_for(informer.wait_until(lambda: len(watched) == 2), 5)
            task.cancel()
            await api.close()
            assert informer.lists == 2 and informer.expirations == 1
            added = [] if expire_with_status else [("ADDED", "B")]
            assert handler.calls == [("replace", "A"), *added, ("replace", "A", "C")]
            # Resumed from the bookmark, never from an empty resourceVersion.
            assert watched == ["10", "20"]

    asyncio.run(main())


def test_kubeconfig_with_inline_ca_and_token(tmp_path: Path) -> None:
    pki = Pki.create()
    config = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [
            {
                "name": "k",
                "cluster": {
                    "server": "https://127.0.0.1:6443/",
                    "certificate-authority-data": base64.b64encode(pki.ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
    }
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    loaded = kubeconfig_config(tmp_path / "kubeconfig")
    assert (loaded.server, loaded.token) == ("https://127.0.0.1:6443", "s3cret")
    assert loaded.ssl_context is not None
    with pytest.raises(ValueError, match="no context named 'other'"):
        kubeconfig_config(tmp_path / "kubeconfig", "other")
