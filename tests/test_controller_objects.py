"""Reading pods and nodes from raw API JSON, and the device-backend encoders."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.ctj.crd import UNREADABLE_SPEC, ctj_from_json
from controller.kube.objects import (
    GPU_MILLI,
    UNSCHEDULABLE_TAINT,
    Problem,
    cpu_milli,
    mem_mib,
    node_from_json,
    parse_quantity,
    pod_from_json,
)
from controller.scheduling.encoders import GpuShare, Hami, WholeGpu, make_encoder
from policies import Taint, Toleration


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1Gi", Decimal(2**30)),
        ("1e3", Decimal(1000)),
        ("1.5k", Decimal(1500)),
        ("100Mi", Decimal(100 * 2**20)),
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_cpu_and_memory_round_up() -> None:
    assert cpu_milli("0.0005") == 1
    assert cpu_milli("1.5") == 1500
    assert mem_mib("1G") == 954  # 10^9 bytes is 953.67 MiB
    with pytest.raises(ValueError, match="not a resource quantity: '12 cores'"):
        parse_quantity("12 cores")


def pod(**spec: object) -> dict[str, object]:
    return {
        "metadata": {
            "uid": "u1",
            "name": "p",
            "namespace": "ns",
            "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:10Z",
            "annotations": {GPU_MILLI: "250"},
        },
        "spec": {"schedulerName": "gpufleet", **spec},
        "status": {"phase": "Pending"},
    }


def test_pod_requests_take_the_larger_of_containers_and_init_containers() -> None:
    record = pod_from_json(
        pod(
            containers=[
                {
                    "resources": {
                        "requests": {"cpu": "1", "memory": "1Gi"},
                        "limits": {"nvidia.com/gpu": "1"},
                    }
                },
                {"resources": {"limits": {"cpu": "500m", "memory": "512Mi"}}},
            ],
            initContainers=[{"resources": {"requests": {"cpu": "4", "memory": "1Gi"}}}],
        )
    )
    assert (record.cpu_milli, record.mem_mib) == (4000, 1536)
    assert record.resources == {"nvidia.com/gpu": Decimal(1)}
    assert record.created == 1767225610.0
    assert record.wants("gpufleet") and not record.wants("other")


def test_pod_equality_ignores_resource_version_and_our_condition() -> None:
    first = pod_from_json(pod(containers=[]))
    later = pod(containers=[])
    later["metadata"]["resourceVersion"] = "8"  # type: ignore[index]
    later["status"] = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "message": "no node fits"}],
    }
    second = pod_from_json(later)
    assert first == second
    assert second.unschedulable_message == "no node fits"


def test_gated_and_terminating_pods_are_not_wanted() -> None:
    assert not pod_from_json(pod(containers=[], schedulingGates=[{"name": "kueue"}])).wants(
        "gpufleet"
    )
    terminating = pod(containers=[])
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:11Z"  # type: ignore[index]
    assert not pod_from_json(terminating).wants("gpufleet")


def test_tolerations_map_to_policy_tolerations() -> None:
    record = pod_from_json(
        pod(
            containers=[],
            tolerations=[
                {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "zone", "operator": "Equal", "value": "a"},
            ],
        )
    )
    assert record.tolerations == (
        Toleration("gpu", "", True, "NoSchedule"),
        Toleration("zone", "a"),
    )
    assert record.tolerations[0].tolerates(Taint("gpu", "x"))
    assert not record.tolerations[1].tolerates(Taint("zone", "b"))


def node(**extra: object) -> dict[str, object]:
    return {
        "metadata": {
            "name": "n1",
            "labels": {"nvidia.com/gpu.product": "A100", "nvidia.com/gpu.memory": "40960"},
            "annotations": {},
        },
        "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}], **extra},
        "status": {
            "allocatable": {
                "cpu": "96",
                "memory": "768Gi",
                "pods": "110",
                "nvidia.com/gpu": "8",
                "aliyun.com/gpu-mem": "320",
                "aliyun.com/gpu-count": "8",
            },
            "conditions": [{"type": "Ready", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
        },
    }


def test_node_record_and_cordon() -> None:
    record = node_from_json(node())
    assert (record.cpu_milli, record.mem_mib) == (96_000, 786_432)
    assert record.taints == (Taint("k", "v", "NoSchedule"),)
    assert UNSCHEDULABLE_TAINT in node_from_json(node(unschedulable=True)).taints
    heartbeat = node()
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:01:00Z"  # type: ignore[index]
    assert node_from_json(heartbeat) == record


def test_whole_gpu_encoder_schedules_a_share_as_the_whole_gpu_the_plugin_gives() -> None:
    record = pod_from_json(pod(containers=[{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]))
    assert WholeGpu().request(record) == (1, 1000)
    assert "gpufleet.io/gpu-milli=250 not honoured" in WholeGpu().caveat(record)
    assert WholeGpu().node_gpus(node_from_json(node())) == 8
    assert WholeGpu().annotations(record, node_from_json(node()), (3,), 1000, 0.0) == {}
    assert Hami().request(record) == (1, 250) and Hami().caveat(record) == ""


def test_hami_encoder_names_device_memory_and_cores() -> None:
    record = pod_from_json(
        pod(
            containers=[
                {"resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "30"}}}
            ]
        )
    )
    hami = Hami()
    assert hami.request(record) == (1, 300)
    notes = hami.annotations(record, node_from_json(node()), (2,), 300, 1700000000.5)
    # 30 % of a 40,960 MiB GPU is 12,288 MiB.
    assert notes["hami.io/vgpu-devices-to-allocate"] == "GPU-n1-2,NVIDIA,12288,30:;"
    assert notes["hami.io/vgpu-node"] == "n1"
    assert notes["hami.io/vgpu-time"] == "1700000000"


def test_gpushare_encoder_states_index_and_memory_in_gib() -> None:
    record = pod_from_json(
        pod(containers=[{"resources": {"limits": {"aliyun.com/gpu-mem": "10"}}}])
    )
    share = GpuShare()
    assert share.request(record) == (1, 250)
    notes = share.annotations(record, node_from_json(node()), (5,), 250, 2.0)
    assert notes["ALIYUN_COM_GPU_MEM_IDX"] == "5"
    assert notes["ALIYUN_COM_GPU_MEM_POD"] == "10"
    assert notes["ALIYUN_COM_GPU_MEM_DEV"] == "40"
    assert notes["ALIYUN_COM_GPU_MEM_ASSUME_TIME"] == "2000000000"


def test_unknown_backend_is_an_error() -> None:
    assert make_encoder("hami").name == "hami"
    with pytest.raises(ValueError, match="known: gpushare, hami, whole"):
        make_encoder("dra")


# -- the decoder never raises --------------------------------------------------------

JUNK = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["-1", "nan", "inf", "1e400", "0", "١٢", "1.5", "", "9" * 40, "0,0,1"]),
)
OUR_KEYS = st.sampled_from(
    [
        "gpufleet.io/attained-gpu-s",
        "gpufleet.io/attained-gpu-s-by-model",
        "gpufleet.io/restarts",
        "gpufleet.io/gang-size",
        "gpufleet.io/submit-time",
        "gpufleet.io/sim-runtime",
        "gpufleet.io/gpu-models",
        "gpufleet.io/gpu-milli",
        "gpufleet.io/assigned-gpus",
        "gpufleet.io/assigned-milli",
        "gpufleet.io/bound-at",
    ]
)
ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    notes=st.dictionaries(OUR_KEYS, JUNK, max_size=4),
    quantity=JUNK,
    priority=ANYTHING,
    tolerations=ANYTHING,
)
def test_the_pod_decoder_never_raises_and_names_each_bad_field(
    notes: dict[str, str], quantity: str, priority: object, tolerations: object
) -> None:
    obj = {
        "metadata": {"uid": "u", "name": "p", "annotations": notes},
        "spec": {
            "schedulerName": "gpufleet",
            "priority": priority,
            "tolerations": tolerations,
            "containers": [{"resources": {"requests": {"cpu": quantity, "nvidia.com/gpu": "1"}}}],
        },
    }
    pod = pod_from_json(obj)
    fields = {p.field for p in pod.problems}
    assert fields <= {f"metadata.annotations[{k}]" for k in notes} | {
        "spec.containers[0].resources[cpu]",
        "spec.priority",
        "spec.tolerations",
    }
    for key, value in notes.items():
        if f"metadata.annotations[{key}]" not in fields and key.endswith("restarts"):
            assert pod.meta.restarts == int(value)  # a value accepted is the value written


def test_an_unreadable_gpu_count_label_is_dropped_and_named() -> None:
    node = node_from_json(
        {
            "metadata": {"name": "n", "labels": {"nvidia.com/gpu.count": "eight"}},
            "status": {"allocatable": {"cpu": "4", "nvidia.com/gpu": "8"}},
        }
    )
    assert "nvidia.com/gpu.count" not in node.labels
    (problem,) = node.problems
    assert problem.field == "metadata.labels[nvidia.com/gpu.count]"
    assert Hami().node_gpus(node) == 8  # falls back to the extended resource


CTJ_FIELDS = {
    "spec.image": "spec.image",
    "spec.retrain.deadlineSeconds": "spec.retrain",
    "spec.retrain.windowSeconds": "spec.retrain",
    "spec.replicas.min": "spec.replicas",
    "spec.replicas.max": "spec.replicas",
    "spec.resources.gpu": "spec.resources.gpu",
    "spec.resources.gpuTypes": "spec.resources",
    "spec.env": "spec.env",
    "spec.historyLimit": "spec.historyLimit",
    "spec.accuracy": "spec.accuracy",
}


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(list(CTJ_FIELDS)), value=ANYTHING)
def test_the_ctj_decoder_never_raises_and_names_the_field(path: str, value: object) -> None:
    spec: dict[str, Any] = {
        "image": "trainer:1",
        "retrain": {"windowSeconds": 3600, "deadlineSeconds": 1800},
        "resources": {"gpu": {"count": 1}},
        "replicas": {"min": 1},
    }
    parent = spec
    *parents, leaf = path.split(".")[1:]
    for name in parents:
        parent = parent.setdefault(name, {})
    parent[leaf] = value
    ctj = ctj_from_json({"metadata": {"name": "c", "uid": "u"}, "spec": spec})
    if ctj.problem is not None:
        assert ctj.problem.field.startswith(CTJ_FIELDS[path])
        assert ctj.spec is UNREADABLE_SPEC


def test_a_ctj_with_a_negative_deadline_names_it() -> None:
    spec = {"image": "t", "retrain": {"windowSeconds": 60, "deadlineSeconds": -5}}
    ctj = ctj_from_json({"metadata": {"name": "c"}, "spec": spec})
    assert ctj.problem == Problem("spec.retrain.deadlineSeconds", "must be at least 1, got -5")
