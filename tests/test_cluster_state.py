"""ClusterState: allocation accounting, read-only views and the topology graph."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import ClusterState, NodeSpec, Taint, Toleration
from tests.conftest import node


def test_allocate_and_release_restore_free_resources(two_nodes: ClusterState) -> None:
    two_nodes.allocate(1, (0, 2), 1000, 8000, 4096)
    assert two_nodes.gpu_free[1].tolist() == [0, 1000, 0, 1000]
    assert two_nodes.cpu_free[1] == 64_000 - 8000
    assert two_nodes.allocated_gpu_milli() == 2000
    two_nodes.release(1, (0, 2), 1000, 8000, 4096)
    assert two_nodes.gpu_free[1].tolist() == [1000] * 4
    assert two_nodes.allocated_gpu_milli() == 0


def test_sharing_tasks_stack_on_one_gpu_up_to_1000_milli(two_nodes: ClusterState) -> None:
    two_nodes.allocate(0, (3,), 600, 0, 0)
    two_nodes.allocate(0, (3,), 400, 0, 0)
    assert two_nodes.gpu_free[0, 3] == 0
    with pytest.raises(ValueError, match="GPU 3 cannot take 1 milli"):
        two_nodes.allocate(0, (3,), 1, 0, 0)


@pytest.mark.parametrize(
    ("gpus", "milli", "cpu", "message"),
    [
        ((0,), 1000, 65_000, "not enough CPU"),
        ((4,), 1000, 0, "GPU 4 cannot take"),
        ((1, 1), 1000, 0, "repeated"),
    ],
)
def test_over_commit_is_refused_without_side_effects(
    two_nodes: ClusterState, gpus: tuple[int, ...], milli: int, cpu: int, message: str
) -> None:
    before = two_nodes.gpu_free.copy(), two_nodes.cpu_free.copy()
    with pytest.raises(ValueError, match=message):
        two_nodes.allocate(0, gpus, milli, cpu, 0)
    assert np.array_equal(two_nodes.gpu_free, before[0])
    assert np.array_equal(two_nodes.cpu_free, before[1])


def test_releasing_more_than_taken_is_an_error(two_nodes: ClusterState) -> None:
    with pytest.raises(ValueError, match="more than was taken"):
        two_nodes.release(0, (0,), 500, 0, 0)


def test_view_is_read_only_and_scratch_is_private(two_nodes: ClusterState) -> None:
    view = two_nodes.view()
    with pytest.raises(ValueError, match="read-only"):
        view.gpu_free[0, 0] = 0
    scratch = view.scratch()
    scratch.allocate(0, (0,), 1000, 0, 0)
    assert two_nodes.gpu_free[0, 0] == 1000
    assert view.gpu_free[0, 0] == 1000


def test_versions_count_changes_per_node(two_nodes: ClusterState) -> None:
    two_nodes.allocate(1, (0,), 1000, 0, 0)
    two_nodes.allocate(1, (1,), 1000, 0, 0)
    assert two_nodes.version.tolist() == [0, 2]


def test_mixed_widths_pad_with_unusable_gpus() -> None:
    state = ClusterState([node("a", gpus=2), node("b", gpus=8), node("cpu", gpus=0)])
    assert state.gpu_free.shape == (3, 8)
    assert state.gpu_free[0].tolist() == [1000, 1000] + [0] * 6
    assert state.total_gpus == 10
    assert state.gpus_of_model() == {"V100": 10}
    assert state.model_idx.tolist() == [0, 0, -1]


def test_topology_links_gpus_to_nodes_to_racks() -> None:
    nodes = [
        NodeSpec("a", 1000, 1000, 2, "T4", rack="r1"),
        NodeSpec("b", 1000, 1000, 1, "T4", rack="r2"),
    ]
    graph = ClusterState(nodes).topology()
    assert list(graph.successors("a/gpu1")) == ["a"]
    assert list(graph.successors("a")) == ["rack/r1"]
    assert list(graph.successors("rack/r2")) == ["cluster"]
    assert sum(1 for _, d in graph.nodes(data=True) if d["kind"] == "gpu") == 3


def test_invalid_clusters_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        ClusterState([node("a"), node("a")])
    with pytest.raises(ValueError, match="no GPU model"):
        NodeSpec("x", 1000, 1000, gpus=2)
    with pytest.raises(ValueError, match="at least one node"):
        ClusterState([])
    assert ClusterState([NodeSpec("t", 1, 1, taints=(Taint("k"),))]).has_taints


def test_version_stamps_never_repeat_across_copies(two_nodes: ClusterState) -> None:
    scratch = two_nodes.scratch()
    scratch.allocate(0, (0,), 1000, 0, 0)
    two_nodes.allocate(0, (1,), 500, 0, 0)
    # One change each, to different GPUs: the stamps must differ so a memo keyed on the
    # version cannot mistake one state for the other.
    assert scratch.version[0] != two_nodes.version[0]


LABELS = st.dictionaries(st.sampled_from(["zone", "pool"]), st.sampled_from(["a", "b"]), max_size=2)
TAINTS = st.lists(
    st.builds(
        Taint,
        st.sampled_from(["gpu", "spot"]),
        st.sampled_from(["", "x"]),
        st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"]),
    ),
    max_size=2,
    unique=True,
)
TOLERATIONS = st.lists(
    st.builds(
        Toleration,
        st.sampled_from(["", "gpu", "spot"]),
        st.sampled_from(["", "x"]),
        st.booleans(),
        st.sampled_from(["", "NoSchedule", "NoExecute"]),
    ),
    max_size=2,
)


@given(st.lists(st.tuples(LABELS, TAINTS), min_size=1, max_size=6), LABELS, TOLERATIONS)
def test_label_index_masks_follow_the_node_by_node_rules(
    nodes: list[tuple[dict[str, str], list[Taint]]],
    selector: Mapping[str, str],
    tolerations: list[Toleration],
) -> None:
    specs = [
        NodeSpec(f"n{i}", 1000, 1000, labels=lb, taints=tuple(t)) for i, (lb, t) in enumerate(nodes)
    ]
    index = ClusterState(specs).view().label_index
    selected = [all(n.labels.get(k) == v for k, v in selector.items()) for n in specs]
    tolerated = [
        all(
            any(t.tolerates(taint) for t in tolerations)
            for taint in n.taints
            if taint.effect in ("NoSchedule", "NoExecute")
        )
        for n in specs
    ]
    assert index.selector_mask(selector).tolist() == selected
    assert index.taint_mask(tuple(tolerations)).tolist() == tolerated


def test_label_index_is_built_once_shared_by_copies_and_never_written() -> None:
    state = ClusterState([NodeSpec("n0", 1000, 1000, labels={"zone": "a"})])
    assert state.view().label_index is state.label_index is state.scratch().label_index
    with pytest.raises(ValueError, match="read-only"):
        state.label_index.label_codes["zone"][0] = 1
    with pytest.raises(FrozenInstanceError, match="cannot assign"):
        state.label_index.num_nodes = 2  # type: ignore[misc]
