"""The cache and its ledger: every bound pod counted once, whoever bound it; assumptions
counted until the watch confirms or they are dropped; relists replace the cache."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.kube.objects import ASSIGNED_GPUS, ASSIGNED_MILLI, GPU_MILLI
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.ledger import Charge


def node_json(name: str, gpus: int = 4) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": str(gpus)}
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "A100"}},
        "status": {"allocatable": resources},
    }


def pod_json(
    name: str,
    node: str = "",
    gpus: int = 1,
    milli: int = 1000,
    assigned: str | None = None,
    scheduler: str = "gpufleet",
) -> dict[str, Any]:
    notes = {GPU_MILLI: str(milli)} if milli < 1000 else {}
    if assigned is not None:
        notes.update({ASSIGNED_GPUS: assigned, ASSIGNED_MILLI: str(milli)})
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [
            {
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {"nvidia.com/gpu": str(gpus)},
                }
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "uid": f"uid-{name}",
            "name": name,
            "namespace": "default",
            "resourceVersion": "1",
            "annotations": notes,
        },
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


def cache_with(*nodes: str) -> ClusterCache:
    cache = ClusterCache(WholeGpu())
    cache.replace(NODES, [node_json(n) for n in nodes])
    return cache


def free(cache: ClusterCache, node: str) -> list[int]:
    state = cache.ledger.state
    assert state is not None
    return [int(x) for x in state.gpu_free[state.node_index[node]]]


def test_assumed_pod_echoed_by_the_watch_is_counted_once() -> None:
    cache = cache_with("a")
    cache.apply(PODS, "ADDED", pod_json("p"))
    pending = cache.pods["uid-p"]
    cache.assume(pending, Charge("a", (1,), 1000, 1000, 1024))
    assert free(cache, "a") == [1000, 0, 1000, 1000]
    assert cache.pending_pods() == []
    cache.apply(PODS, "MODIFIED", pod_json("p", node="a", assigned="1"))
    assert cache.assumed == {}
    assert free(cache, "a") == [1000, 0, 1000, 1000]


def test_forgotten_assumption_frees_the_gpu_unless_the_pod_is_bound() -> None:
    cache = cache_with("a")
    cache.apply(PODS, "ADDED", pod_json("p"))
    cache.assume(cache.pods["uid-p"], Charge("a", (0,), 1000, 1000, 1024))
    assert cache.expired(1e9) == []  # no deadline while the bind is on its way
    cache.finish_binding("uid-p", 10.0)
    assert cache.expired(9.0) == [] and cache.expired(10.0) == ["uid-p"]
    cache.forget("uid-p")
    assert free(cache, "a") == [1000] * 4
    assert [p.name for p in cache.pending_pods()] == ["p"]


def test_pods_of_other_schedulers_take_the_first_free_gpus() -> None:
    cache = cache_with("a")
    cache.apply(PODS, "ADDED", pod_json("ours", node="a", assigned="0"))
    cache.apply(PODS, "ADDED", pod_json("theirs", node="a", gpus=2, scheduler="default-scheduler"))
    assert free(cache, "a") == [0, 0, 0, 1000]
    cache.apply(PODS, "DELETED", pod_json("ours", node="a", assigned="0"))
    assert free(cache, "a") == [1000, 0, 0, 1000]


def test_pods_bound_before_their_node_is_known_are_recharged_when_it_appears() -> None:
    cache = cache_with("a")
    cache.apply(PODS, "ADDED", pod_json("early", node="b", gpus=2, scheduler="other"))
    cache.apply(NODES, "ADDED", node_json("b"))
    assert free(cache, "b") == [0, 0, 1000, 1000]


def test_deleted_node_drops_its_assumptions() -> None:
    cache = cache_with("a", "b")
    cache.apply(PODS, "ADDED", pod_json("p"))
    cache.assume(cache.pods["uid-p"], Charge("b", (0,), 1000, 1000, 1024))
    cache.apply(NODES, "DELETED", node_json("b"))
    assert cache.assumed == {}
    assert not cache.ledger.has_node("b")
    assert [p.name for p in cache.pending_pods()] == ["p"]


def test_relist_replaces_the_cache() -> None:
    cache = cache_with("a")
    cache.replace(
        PODS, [pod_json("x", node="a", assigned="0"), pod_json("y", node="a", assigned="1")]
    )
    cache.replace(PODS, [pod_json("y", node="a", assigned="1"), pod_json("z")])
    assert sorted(p.name for p in cache.pods.values()) == ["y", "z"]
    assert free(cache, "a") == [1000, 0, 1000, 1000]


def test_status_patch_of_ours_does_not_wake_the_scheduler() -> None:
    cache = cache_with("a")
    woken: list[int] = []
    cache.on_change = lambda: woken.append(1)
    cache.apply(PODS, "ADDED", pod_json("p"))
    patched = pod_json("p")
    patched["metadata"]["resourceVersion"] = "2"
    patched["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "message": "m"}]
    cache.apply(PODS, "MODIFIED", patched)
    assert len(woken) == 1


STEPS = st.lists(
    st.tuples(st.sampled_from(["assume", "echo", "forget", "delete", "relist"]), st.integers(0, 5)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_ledger_always_equals_a_fresh_count(steps: list[tuple[str, int]]) -> None:
    """Whatever order assumptions, watch echoes, drops, deletions and relists come in,
    the ledger equals the charges recomputed from scratch for the final state."""
    cache = cache_with("a", "b")
    api: dict[str, dict[str, Any]] = {}
    for i in range(6):
        api[f"p{i}"] = pod_json(f"p{i}")
        cache.apply(PODS, "ADDED", api[f"p{i}"])
    for action, i in steps:
        name, uid = f"p{i}", f"uid-p{i}"
        node, gpu = ("a", i % 4) if i < 3 else ("b", i % 4)
        if (
            action == "assume"
            and uid in cache.pods
            and cache.pods[uid].wants("gpufleet")
            and uid not in cache.assumed
        ):
            cache.assume(cache.pods[uid], Charge(node, (gpu,), 1000, 1000, 1024))
        elif action == "echo" and uid in cache.assumed:
            api[name] = pod_json(name, node=node, assigned=str(gpu))
            cache.apply(PODS, "MODIFIED", api[name])
        elif action == "forget":
            cache.forget(uid)
        elif action == "delete" and name in api:
            cache.apply(PODS, "DELETED", api.pop(name))
        elif action == "relist":
            cache.replace(PODS, list(api.values()))
    expected = cache_with("a", "b")
    expected.replace(PODS, list(api.values()))
    for uid, assumption in cache.assumed.items():
        expected.ledger.charge(uid, assumption.charge)
    assert cache.ledger.state is not None and expected.ledger.state is not None
    assert np.array_equal(cache.ledger.state.gpu_free, expected.ledger.state.gpu_free)
    assert np.array_equal(cache.ledger.state.cpu_free, expected.ledger.state.cpu_free)
