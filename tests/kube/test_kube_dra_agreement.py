"""Simulator ⇄ controller agreement (tests/kube/test_kube_agreement.py's lockstep) on a
DRA cluster and on a mixed one.

DRA cluster: every node of the shared trace is a KWOK node without device-plugin GPUs
whose GPUs the test publishes as a ResourceSlice (product = the trace's model; 80 GiB
shareable devices for all models, so a share of `m` milli-GPU is the same capacity
request, `m`/1000 of 80 GiB, on every model). Each job's pods ask through a claim
template: `count` whole GPUs, or a memory capacity for a share; a job limited to GPU
models asks with a CEL selector on `productName`. The simulator replays the trace as
it is, and both hosts must decide and place identically, and `controller record` must
write the trace's nodes and jobs back from the slices and claims. Best-fit and FGD
place; LAS preempts and Gavel preempts and resizes in rounds, so evicted pods' claims
are freed by kube-controller-manager and their recreated pods get new claims before the
plans are carried out, as in the simulator at the same instant.

Mixed cluster: A100 and V100 nodes are DRA nodes, T4 and P100 nodes HAMi device-plugin
nodes. Jobs limited to A100/V100 ask through claims, those limited to T4/P100 through
`nvidia.com/gpu`, unlimited GPU jobs alternate. The simulator sees the same split as
node labels and node selectors (`dra.gpufleet.io/gpus`), which is what the controller
derives from the mechanism each pod asks for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster.fleet import Admin, node_manifest
from controller.devcluster.launcher import ControlPlane
from controller.dra.inventory import DEVICE_PLUGIN, MECHANISM_LABEL
from controller.kube.objects import GPU_RESOURCE
from policies import MILLI, JobSpec, NodeSpec
from tests.kube.dra_helpers import (
    DraAdmin,
    class_manifest,
    gpu_device,
    request,
    slice_manifest,
    template_manifest,
)
from tests.kube.test_kube_agreement import (
    JOBS_FOR,
    check_recorded_trace,
    first_difference,
    hami_node,
    manifests,
    mixed_trace,
    must_preempt,
    placements,
    replay_through_controller,
    simulate,
)

pytestmark = pytest.mark.kube

DEVICE_GIB = 80
DRA_MODELS = frozenset({"A100", "V100"})
POLICIES = ("bestfit", "fgd", "las", "gavel")


def template_name(spec: JobSpec) -> str:
    task = spec.task
    models = "-".join(sorted(m.lower() for m in spec.allowed_models or ()))
    return f"t-{task.num_gpus}-{task.gpu_milli}-{models or 'any'}"


def template_for(spec: JobSpec, selectors: bool) -> dict[str, Any]:
    task = spec.task
    chosen = []
    if selectors and spec.allowed_models:
        names = ", ".join(f"'{m}'" for m in sorted(spec.allowed_models))
        chosen = [f"device.attributes['gpu.nvidia.com'].productName in [{names}]"]
    if task.gpu_milli < MILLI:
        share = f"{DEVICE_GIB * task.gpu_milli // 50 // (MILLI // 50)}Gi"
        claim = request(selectors=chosen, capacity={"memory": share})
    else:
        claim = request(count=task.num_gpus, selectors=chosen)
    return template_manifest(template_name(spec), claim)


def with_claims(manifest: dict[str, Any], template: str) -> dict[str, Any]:
    """The pod asking for its GPUs through a claim from `template` instead."""
    spec = manifest["spec"]
    container = spec["containers"][0]
    container["resources"]["limits"].pop(GPU_RESOURCE, None)
    container["resources"]["claims"] = [{"name": "gpu"}]
    spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": template}]
    manifest["metadata"]["annotations"].pop("gpufleet.io/gpu-milli", None)
    return manifest


def dra_node_manifest(spec: NodeSpec) -> dict[str, Any]:
    manifest = node_manifest(spec)
    for resources in manifest["status"].values():
        resources.pop(GPU_RESOURCE, None)
    manifest["metadata"]["labels"].pop("nvidia.com/gpu.product", None)
    return manifest


class DraCluster:
    """Creates the nodes (DRA ones with their slices), the class and the templates;
    makes each job's pods by the mechanism it uses."""

    def __init__(self, jobs: list[JobSpec], is_dra: Any, selectors: bool) -> None:
        self.jobs = jobs
        self.is_dra = is_dra
        self.selectors = selectors

    async def create(self, admin: Admin, nodes: list[NodeSpec]) -> None:
        dra = DraAdmin(admin)
        await dra.create(class_manifest())
        for node in nodes:
            if not self.is_dra(node):
                await admin.api.call("POST", "/api/v1/nodes", body=hami_node(node))
                continue
            await admin.api.call("POST", "/api/v1/nodes", body=dra_node_manifest(node))
            devices = [
                gpu_device(i, node.gpu_model, f"{DEVICE_GIB}Gi", shareable=True)
                for i in range(node.gpus)
            ]
            await dra.create(slice_manifest(node.name, devices))
        made = set()
        for job in self.jobs:
            if job.task.num_gpus and self.uses_dra(job) and template_name(job) not in made:
                made.add(template_name(job))
                await dra.create(template_for(job, self.selectors))

    def uses_dra(self, job: JobSpec) -> bool:
        return self.is_dra(job)

    def pods(self, job: JobSpec) -> list[dict[str, Any]]:
        pods = manifests(job)
        if not job.task.num_gpus or not self.uses_dra(job):
            return pods
        return [with_claims(p, template_name(job)) for p in pods]


def all_dra(_: object) -> bool:
    return True


def mixed_split(
    nodes: list[NodeSpec], jobs: list[JobSpec]
) -> tuple[Any, list[NodeSpec], list[JobSpec]]:
    """Which nodes and jobs use DRA in the mixed cluster, and the trace as the
    simulator sees that split (labels on GPU nodes, selectors on GPU jobs)."""
    dra_jobs = {
        j.id
        for i, j in enumerate(jobs)
        if j.task.num_gpus
        and (j.allowed_models == DRA_MODELS or (j.allowed_models is None and i % 2 == 0))
    }

    def is_dra(thing: NodeSpec | JobSpec) -> bool:
        if isinstance(thing, NodeSpec):
            return thing.gpu_model in DRA_MODELS
        return thing.id in dra_jobs

    labelled = [
        dataclasses.replace(
            n, labels={**n.labels, MECHANISM_LABEL: "dra" if is_dra(n) else DEVICE_PLUGIN}
        )
        for n in nodes
    ]
    selected = [
        dataclasses.replace(
            j, node_selector={MECHANISM_LABEL: "dra" if is_dra(j) else DEVICE_PLUGIN}
        )
        if j.task.num_gpus
        else j
        for j in jobs
    ]
    return is_dra, labelled, selected


def agree(kube: ControlPlane, policy: str, mixed: bool, out: Path) -> None:
    nodes, jobs = mixed_trace(num_jobs=JOBS_FOR.get(policy, 80))
    if mixed:
        is_dra, sim_nodes, sim_jobs = mixed_split(nodes, jobs)
        cluster = DraCluster(jobs, is_dra, selectors=False)
    else:
        sim_nodes, sim_jobs = nodes, jobs
        cluster = DraCluster(jobs, all_dra, selectors=True)
    expected = simulate(sim_nodes, sim_jobs, policy)
    must_preempt(policy, expected)

    async def replay() -> Any:
        try:
            return await replay_through_controller(
                kube, nodes, jobs, policy, out, cluster.create, cluster.pods
            )
        finally:
            admin = Admin(str(kube.admin_kubeconfig))
            try:
                await DraAdmin(admin).reset()
            finally:
                await admin.close()

    live = asyncio.run(replay())
    difference = first_difference(expected, live.passes)
    assert difference is None, "(time, decided by the simulator only, by the controller only)"
    assert len(live.passes) == len(expected)
    assert {j.spec.id: j.placed for j in live.jobs.values()} == placements(expected)
    check_recorded_trace(out, nodes, jobs, live.pods_bound)


@pytest.mark.parametrize("policy", POLICIES)
def test_agreement_on_a_dra_cluster(kube: ControlPlane, policy: str, tmp_path: Path) -> None:
    agree(kube, policy, mixed=False, out=tmp_path)


@pytest.mark.parametrize("policy", POLICIES)
def test_agreement_on_a_mixed_cluster(kube: ControlPlane, policy: str, tmp_path: Path) -> None:
    agree(kube, policy, mixed=True, out=tmp_path)
