"""deploy/ and the CRD on the real API server: every manifest passes a server-side
dry-run apply, the controller's pod template passes the namespace's `restricted` Pod
Security level, the CRD's validation rejects malformed jobs with messages that say
what to fix, `retrain` cannot change, and `kubectl get ctj` has its columns."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from controller.ctj.crd import API_VERSION, KIND
from controller.devcluster.fleet import Admin
from controller.devcluster.install import SYSTEM_NAMESPACE, Applier, deploy_documents
from controller.devcluster.launcher import REPO
from controller.kube.kubeapi import KubeApi
from tests.kube.ctj_helpers import (
    CTJS,
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    run,
)

pytestmark = pytest.mark.kube

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def template_pod(deployment: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(deployment["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "template-check"},
        "spec": template["spec"],
    }


async def dry_run_pod(api: KubeApi, pod: dict[str, Any]) -> tuple[int, Any]:
    return await api.request(
        "POST",
        f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods",
        params={"dryRun": "All"},
        body=pod,
    )


def test_deploy_manifests_pass_a_server_side_dry_run(ctj_env: CtjEnvironment) -> None:  # noqa: F811
    async def scenario(admin: Admin) -> None:
        applier = Applier(admin.api)
        docs = deploy_documents()
        kinds = sorted(d["kind"] for d in docs)
        assert kinds == sorted(
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "Namespace",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
            ]
        )
        for doc in docs:
            status, answer = await applier.apply(doc, dry_run=True)
            assert status == 200, f"{doc['kind']} {doc['metadata']['name']}: {answer}"
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        assert deployment["spec"]["replicas"] == 2
        # The namespace enforces Pod Security "restricted"; the controller's pod passes it...
        status, answer = await dry_run_pod(admin.api, template_pod(deployment))
        assert status == 201, answer
        # ...and the check is real: the same pod running as root is refused.
        rooted = template_pod(deployment)
        rooted["spec"]["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
        del rooted["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]
        status, answer = await dry_run_pod(admin.api, rooted)
        assert status == 403 and "violates PodSecurity" in answer["message"]

    run(ctj_env, scenario)


def malformed(change: str) -> dict[str, Any]:
    job = ctj_manifest("bad")
    spec = job["spec"]
    if change == "deadline-after-window":
        spec["retrain"] = {"windowSeconds": 60, "deadlineSeconds": 90}
    elif change == "window-and-schedule":
        spec["retrain"] = {"windowSeconds": 60, "schedule": "*/5 * * * *", "deadlineSeconds": 30}
    elif change == "fraction-without-memory":
        spec["resources"]["gpu"] = {"count": 1, "milli": 250}
    elif change == "max-below-min":
        spec["replicas"] = {"min": 4, "max": 2}
    elif change == "floor-above-ceiling":
        spec["accuracy"] = {
            "ceiling": 0.6,
            "floor": 0.8,
            "decayPerHour": 1,
            "halfGainGpuSeconds": 9,
        }
    elif change == "no-image":
        del spec["image"]
    elif change == "long-name":
        job["metadata"]["name"] = "x" * 51
    elif change == "bad-schedule":
        spec["retrain"] = {"schedule": "every hour", "deadlineSeconds": 30}
    elif change == "seven-field-schedule":
        spec["retrain"] = {"schedule": "0 */5 * * * * 2027", "deadlineSeconds": 30}
    elif change == "trigger-without-criterion":
        spec["retrain"]["trigger"] = {"minGapSeconds": 60}
    elif change == "trigger-on-cron":
        spec["retrain"] = {
            "schedule": "*/5 * * * *",
            "deadlineSeconds": 30,
            "trigger": {"drop": 0.1},
        }
    elif change == "trigger-below-above-1":
        spec["retrain"]["trigger"] = {"below": 1.5}
    elif change.startswith("valued-"):
        spec["retrain"]["configs"] = [{"name": "only", "workGpuSeconds": 100}]
        spec["accuracy"] = {
            "ceiling": 0.9,
            "floor": 0.3,
            "decayPerHour": 1,
            "halfGainGpuSeconds": 9,
        }
        valued_shape(spec, change)
    return job


def valued_shape(spec: dict[str, Any], change: str) -> None:
    """Shapes a valued CTJ (accuracy and configs) cannot take: no stream runs them."""
    if change == "valued-fraction-with-min-2":
        spec["resources"]["gpu"] = {"count": 1, "milli": 500, "memoryMiB": 8192}
        spec["replicas"] = {"min": 2, "max": 4}
    elif change == "valued-2-gpus-per-replica":
        spec["resources"]["gpu"] = {"count": 2}
        spec["replicas"] = {"min": 1}
    elif change == "valued-min-2-without-gang":
        spec["replicas"] = {"min": 2, "max": 4}
        spec["gang"] = False
    elif change == "valued-min-3-max-3":
        spec["replicas"] = {"min": 3, "max": 3}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("deadline-after-window", "retrain.deadlineSeconds must lie within the window"),
        ("window-and-schedule", "set exactly one of retrain.windowSeconds and retrain.schedule"),
        ("fraction-without-memory", "a fractional GPU (resources.gpu.milli < 1000) needs"),
        ("max-below-min", "replicas.max must be at least replicas.min"),
        ("floor-above-ceiling", "accuracy.floor must not exceed accuracy.ceiling"),
        ("no-image", "spec.image: Required value"),
        ("long-name", "metadata.name must be at most 50 characters"),
        ("bad-schedule", "spec.retrain.schedule in body should match"),
        ("seven-field-schedule", "spec.retrain.schedule in body should match"),
        ("trigger-without-criterion", "retrain.trigger needs below > 0 or drop > 0"),
        ("trigger-on-cron", "retrain.trigger needs retrain.windowSeconds"),
        ("trigger-below-above-1", "spec.retrain.trigger.below: Invalid value"),
        ("valued-fraction-with-min-2", "spec.replicas.min: Invalid value: replicas.min above 1"),
        (
            "valued-2-gpus-per-replica",
            "spec.resources.gpu.count: Invalid value: resources.gpu.count above 1 is not",
        ),
        ("valued-min-2-without-gang", "spec.gang: Invalid value: gang false needs replicas.min 1"),
        ("valued-min-3-max-3", "spec.replicas: Invalid value: replicas.min to replicas.max must"),
    ],
)
def test_crd_rejects_a_malformed_ctj_saying_why(
    ctj_env: CtjEnvironment,  # noqa: F811
    change: str,
    message: str,
) -> None:
    async def scenario(admin: Admin) -> None:
        status, answer = await admin.api.request("POST", CTJS, body=malformed(change))
        assert status == 422, answer
        assert message in answer["message"], answer["message"]
        assert answer["details"]["kind"] == "ContinualTrainingJob"

    run(ctj_env, scenario)


def admitted(change: str) -> dict[str, Any]:
    """The refused valued shape `change` turned into its nearest one a stream takes."""
    job = malformed(change)
    spec = job["spec"]
    if change == "valued-min-3-max-3":
        spec["replicas"] = {"min": 3, "max": 4}  # runs on 4 GPUs
    elif change == "valued-min-2-without-gang":
        spec["replicas"] = {"min": 1, "max": 4}  # one replica: a group of one
    else:  # 2 GPUs per replica without accuracy: a plain gang
        del spec["accuracy"], spec["retrain"]["configs"]
    return job


def test_crd_admits_the_nearest_valued_shapes_a_stream_takes(ctj_env: CtjEnvironment) -> None:  # noqa: F811
    changes = ("valued-min-3-max-3", "valued-min-2-without-gang", "valued-2-gpus-per-replica")

    async def scenario(admin: Admin) -> None:
        for change in changes:
            params = {"dryRun": "All"}
            body = admitted(change)
            status, answer = await admin.api.request("POST", CTJS, params=params, body=body)
            assert status == 201, (change, answer)

    run(ctj_env, scenario)


def test_retrain_cannot_change_and_columns_are_served(ctj_env: CtjEnvironment) -> None:  # noqa: F811
    async def scenario(admin: Admin) -> None:
        example = yaml.safe_load((REPO / "examples" / "continualtrainingjob.yaml").read_text())
        assert (example["apiVersion"], example["kind"]) == (API_VERSION, KIND)
        status, answer = await admin.api.request(
            "POST", CTJS, params={"dryRun": "All"}, body=example
        )
        assert status == 201, answer
        created = await create_ctj(admin.api, ctj_manifest("fixed"))
        changed = copy.deepcopy(created)
        changed["spec"]["retrain"]["deadlineSeconds"] = 4
        status, answer = await admin.api.request("PUT", f"{CTJS}/fixed", body=changed)
        assert status == 422
        assert "retrain is immutable; create a new ContinualTrainingJob" in answer["message"]
        async with admin.api.session.get(CTJS, headers={"Accept": TABLE}) as response:
            table = await response.json()
        columns = [c["name"] for c in table["columnDefinitions"]]
        assert columns == [
            "Name",
            "Phase",
            "Window",
            "Deadline",
            "Completed",
            "Missed",
            "Last-Retrain",
            "Age",
        ]

    run(ctj_env, scenario)
