"""Why no node fits, counted per filter like kube-scheduler's FailedScheduling message."""

from __future__ import annotations

from policies import ClusterState, FixedDuration, JobSpec, NodeSpec, Taint, TaskRequest, Toleration
from policies.diagnosis import why_no_node_fits

FAKE = Taint("kwok.x-k8s.io/node", "fake", "NoSchedule")


def job(gpus: int = 1, **kwargs: object) -> JobSpec:
    task = TaskRequest(4000, 1024, gpus, 1000 if gpus else 0)
    return JobSpec("j", 0.0, task, FixedDuration(1.0), **kwargs)  # type: ignore[arg-type]


def test_each_node_is_charged_to_the_first_filter_it_fails() -> None:
    nodes = [
        NodeSpec("tainted", 8000, 8192, 8, "A100", taints=(FAKE,)),
        NodeSpec("elsewhere", 8000, 8192, 8, "A100", labels={"zone": "b"}),
        NodeSpec("v100", 8000, 8192, 8, "V100", labels={"zone": "a"}),
        NodeSpec("small", 8000, 8192, 1, "A100", labels={"zone": "a"}),
        NodeSpec("busy", 2000, 8192, 8, "A100", labels={"zone": "a"}),
    ]
    spec = job(gpus=2, allowed_models=frozenset({"A100"}), node_selector={"zone": "a"})
    assert why_no_node_fits(spec, ClusterState(nodes)) == (
        "0/5 nodes are available: 1 untolerated taint kwok.x-k8s.io/node=fake:NoSchedule, "
        "1 node selector does not match, 1 GPU model not allowed, 1 insufficient GPUs, "
        "1 insufficient CPU"
    )


def test_a_tolerated_taint_is_not_the_reason_and_counts_add_up() -> None:
    nodes = [NodeSpec(f"n{i}", 1000, 8192, 8, "A100", taints=(FAKE,)) for i in range(3)]
    tolerant = job(tolerations=(Toleration("kwok.x-k8s.io/node", exists=True),))
    assert why_no_node_fits(tolerant, ClusterState(nodes)) == (
        "0/3 nodes are available: 3 insufficient CPU"
    )
    assert why_no_node_fits(job(), ClusterState(nodes)).startswith(
        "0/3 nodes are available: 3 untolerated taint"
    )
