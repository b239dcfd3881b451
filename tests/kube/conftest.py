"""One control plane per test session (starting one costs ~10 s); each test gets an
empty cluster. Skipped, with instructions, where the binaries are not built."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.kube.controlplane import HOW_TO_BUILD, ControlPlane, find_binaries
from tests.kube.helpers import Admin


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip(HOW_TO_BUILD)
    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp("controlplane"))
    try:
        plane.start()
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
        admin = Admin(str(control_plane.admin_kubeconfig))
        try:
            await admin.reset()
        finally:
            await admin.close()

    asyncio.run(reset())
