"""One control plane per test session (starting one costs ~10 s; controller.devcluster's
launcher, as `gpufleet dev-cluster` uses it); each test gets an empty cluster. Where the
binaries are not built the tier is skipped with instructions on a developer's machine,
but under CI (`CI=true`) it is a failure with the reason: CI must never go green without
the real apiserver."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster.fleet import Admin
from controller.devcluster.launcher import HOW_TO_BUILD, ControlPlane, PlaneOptions, find_binaries


@pytest.fixture(scope="session")
def controlplane_bin() -> Path:
    """The bin directory; skips (fails under CI) when the binaries are not built."""
    bin_dir = find_binaries()
    if bin_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"the real-apiserver tier cannot run under CI: {HOW_TO_BUILD}", pytrace=False
            )
        pytest.skip(f"real-apiserver tier skipped: {HOW_TO_BUILD}")
    return bin_dir


@pytest.fixture(scope="session")
def control_plane(
    controlplane_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    options = PlaneOptions(die_with_starter=True)  # a killed run leaves no plane behind
    plane = ControlPlane(controlplane_bin, tmp_path_factory.mktemp("controlplane"), options)
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
