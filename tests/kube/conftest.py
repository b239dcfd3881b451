"""One control plane per test session (starting one costs ~10 s); each test gets an
empty cluster. Where the binaries are not built the tier is skipped with instructions
on a developer's machine, but under CI (`CI=true`) it is a failure with the reason:
CI must never go green without the real apiserver."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.kube.controlplane import HOW_TO_BUILD, ControlPlane, find_binaries
from tests.kube.helpers import Admin


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = find_binaries()
    if bin_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(HOW_TO_BUILD.replace("skipped", "cannot run under CI"), pytrace=False)
        pytest.skip(HOW_TO_BUILD)
    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp("controlplane"))
    try:
        try:
            plane.start()
        except Exception as err:
            pytest.fail(f"the real-apiserver tier could not start: {err!r}", pytrace=False)
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The shared control plane, emptied after the test."""
    yield control_plane
    if "kube-apiserver" not in control_plane.procs:
        control_plane.start_apiserver()

    async def reset() -> None:
        # Deleting a 2,000-pod burst can take longer than a normal call on 2 busy cores.
        admin = Admin(str(control_plane.admin_kubeconfig), timeout_s=180.0)
        try:
            await admin.reset()
        finally:
            await admin.close()

    asyncio.run(reset())
