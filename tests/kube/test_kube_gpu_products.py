"""GPU models as real nodes report them, on the real API server: KWOK nodes labelled the
way GPU Feature Discovery labels them (`nvidia.com/gpu.product: NVIDIA-A100-SXM4-40GB`),
the controller run as deployed, and requests naming families and variants
(policies/gpu_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.ctj.crd import NAME_LABEL
from controller.devcluster.fleet import Admin, pod_manifest
from policies import NodeSpec, TaskRequest
from policies.gpu_models import node_model
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    get_ctj,
    run,
    serving,
)
from tests.kube.helpers import eventually

pytestmark = pytest.mark.kube


def gfd_node(name: str, gpus: int, product: str) -> NodeSpec:
    return NodeSpec(name, 96_000, 786_432, gpus, node_model(product), gpu_product=product)


# Name order puts the V100 node first: a policy that ignored the model would use it.
NODES = [
    gfd_node("gpu-0-v100", 8, "Tesla-V100-SXM2-16GB"),
    gfd_node("gpu-1-a100", 4, "NVIDIA-A100-SXM4-40GB"),
]
ONE_GPU = TaskRequest(cpu_milli=1000, mem_mib=1024, num_gpus=1, gpu_milli=1000)
LONG = {"window_s": 600, "deadline_s": 300, "runtime": "600s"}


def test_a_gfd_labelled_a100_node_takes_a_ctj_asking_for_a100(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(NODES)
        async with serving(ctj_env, tmp_path / "serve.log") as serve:
            await create_ctj(admin.api, ctj_manifest("wants-a100", gpu_models=("A100",), **LONG))
            await create_ctj(
                admin.api, ctj_manifest("wants-80gb", replicas=1, gpu_models=("A100-80GB",), **LONG)
            )
            await admin.create_pod(pod_manifest("wants-v100", ONE_GPU, allowed_models=["V100"]))

            async def placed() -> dict[str, str] | None:
                listed = await admin.pods()
                pods = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in listed}
                wanted = ("wants-a100-w0-0", "wants-a100-w0-1", "wants-v100")
                return pods if all(pods.get(n) for n in wanted) else None

            pods = await eventually(placed, timeout_s=30, what="the A100 and V100 pods bound")
            assert pods["wants-a100-w0-0"] == pods["wants-a100-w0-1"] == "gpu-1-a100"
            assert pods["wants-v100"] == "gpu-0-v100"
            await check_variant_unschedulable(admin)
            ctj = await get_ctj(admin.api, "wants-a100")
            assert ctj is not None
            assert {p["node"] for p in ctj["status"]["placements"]} == {"gpu-1-a100"}
            assert serve.stop() == 0

    run(ctj_env, scenario)


async def check_variant_unschedulable(admin: Admin) -> None:
    """`A100-80GB` names a variant the 40 GB node is not: its pod waits, with the
    scheduler's FailedScheduling Event."""

    async def failed() -> bool:
        listing = await admin.api.call("GET", "/apis/events.k8s.io/v1/namespaces/default/events")
        return any(
            e["reason"] == "FailedScheduling" and e["regarding"]["name"] == "wants-80gb-w0-0"
            for e in listing["items"]
        )

    await eventually(failed, timeout_s=20, what="FailedScheduling for the 80 GB request")
    pods = await admin.pods()
    mine = [p for p in pods if p["metadata"]["labels"].get(NAME_LABEL) == "wants-80gb"]
    assert [p["spec"].get("nodeName") for p in mine] == [None]
