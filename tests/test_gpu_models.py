"""GPU model names (policies/gpu_models.py): the product → model table worked by hand,
properties of the matching, and the match applied wherever a job's models are checked:
node filters, the placement contract, every registered policy, both hosts' node reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.kube.objects import node_from_json
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.workload import node_spec
from policies import (
    ClusterState,
    Context,
    JobStatus,
    JobView,
    NodeSpec,
    Place,
    Placement,
    PlacementError,
    Snapshot,
    TaskPlacement,
    check_shape,
    make_policy,
)
from policies.gpu_models import (
    FAMILIES,
    admits,
    family_admits,
    matches,
    names_variant,
    node_model,
)
from policies.placement import capacity_mask, feasible_nodes
from policies.share_allocator import ShareFitter
from tests.conftest import job
from traces import canonical

A100_40 = "NVIDIA-A100-SXM4-40GB"
A100_80 = "NVIDIA-A100-SXM4-80GB"


@pytest.mark.parametrize(
    ("product", "model"),
    [
        ("NVIDIA-A100-SXM4-40GB", "A100"),
        ("NVIDIA-A100-80GB-PCIe", "A100"),
        ("NVIDIA-A100-PCIE-40GB", "A100"),
        ("A100-SXM4-40GB", "A100"),
        ("Tesla-V100-SXM2-16GB", "V100"),
        ("Tesla-T4", "T4"),
        ("Tesla-K80", "K80"),
        ("NVIDIA-H100-80GB-HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),  # a DRA device's productName
        ("NVIDIA-A10G", "A10G"),
        ("NVIDIA-L40S", "L40S"),
        ("a100", "a100"),  # Sia's and Gavel's tables spell models in lower case
        ("V100", "V100"),
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"),
        ("NVIDIA-GeForce-RTX-4090", "NVIDIA-GeForce-RTX-4090"),
        ("V100M32", "V100M32"),
        ("A100X", "A100X"),
        ("unknown", "unknown"),
    ],
)
def test_node_model_table(product: str, model: str) -> None:
    assert node_model(product) == model


@pytest.mark.parametrize(
    ("request_", "product", "expected"),
    [
        ("A100", A100_40, True),
        ("A100", A100_80, True),
        ("a100", A100_40, True),
        ("A100-80GB", A100_80, True),
        ("A100-80GB", "NVIDIA-A100-80GB-PCIe", True),
        ("A100-80GB", A100_40, False),
        ("A100-SXM4-40GB", A100_40, True),
        ("NVIDIA-A100-SXM4-40GB", "A100-SXM4-40GB", True),
        ("A100-PCIe", "NVIDIA-A100-PCIE-40GB", True),
        ("A100-PCIe", A100_40, False),
        ("A100", "NVIDIA-A10G", False),
        ("A10", "NVIDIA-A10G", False),
        ("A10", "A100", False),
        ("V100", "Tesla-V100-SXM2-16GB", True),
        ("V100-32GB", "Tesla-V100-SXM2-16GB", False),
        ("T4", "Tesla-T4", True),
        ("H100", "NVIDIA-H100-80GB-HBM3", True),
        ("A100", "A100", True),
        ("A100-80GB", "A100", False),  # a node known only by its family: memory unknown
        ("A100", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", False),  # a slice is not the GPU
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", True),
        ("NVIDIA-GeForce-RTX-4090", "NVIDIA-GeForce-RTX-4090", True),
        ("RTX-4090", "NVIDIA-GeForce-RTX-4090", False),
        ("V100M32", "V100M32", True),
        ("V100", "V100M32", False),
    ],
)
def test_matches_table(request_: str, product: str, expected: bool) -> None:
    assert matches(request_, product) is expected


def test_admits_any_name_and_none_means_any() -> None:
    assert admits(None, "anything")
    assert admits(frozenset({"V100", "A100-80GB"}), A100_80)
    assert not admits(frozenset({"V100", "A100-80GB"}), A100_40)


def test_a_model_admits_a_variant_request_of_its_family_only_when_bare() -> None:
    assert names_variant(frozenset({"V100", "A100-80GB"}))
    assert not names_variant(frozenset({"V100", "a100", "V100M32"}))
    assert family_admits(frozenset({"A100-80GB"}), "A100")
    assert not family_admits(frozenset({"A100-80GB"}), "V100")
    assert not family_admits(frozenset({"A100-MIG-1g.5gb"}), "A100")
    assert family_admits(None, "V100")


# -- properties ---------------------------------------------------------------------------

_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.", min_size=1, max_size=6)
_QUALIFIERS = st.lists(_WORD.filter(lambda w: w != "mig"), max_size=3)
_PRODUCTS = st.text(
    alphabet="ABCDGHKLMPTVXabcdegmnprstuvx0123456789-_ .", min_size=1, max_size=24
).filter(lambda t: t.strip(" -_") != "")


def _spell(data: st.DataObject, word: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if up else c.lower() for c, up in zip(word, flips, strict=True))


@given(_PRODUCTS, st.data())
def test_a_product_matches_its_own_name_in_any_case(product: str, data: st.DataObject) -> None:
    assert matches(product, product)
    assert matches(_spell(data, product), product)
    assert admits(frozenset({product}), product)


@given(
    st.sampled_from(sorted(FAMILIES)),
    st.sampled_from(["", "NVIDIA-", "Tesla-", "nvidia "]),
    _QUALIFIERS,
    st.data(),
)
def test_family_names_match_every_product_of_the_family_in_any_case(
    family: str, vendor: str, qualifiers: list[str], data: st.DataObject
) -> None:
    product = vendor + "-".join([family.upper(), *qualifiers])
    assert node_model(product) == family.upper()
    assert matches(_spell(data, family), product)
    missing = "q" + "".join(qualifiers)  # longer than any one qualifier, so not among them
    assert not matches(f"{family}-{missing}", product)


@given(st.sets(_PRODUCTS, min_size=1, max_size=3), _PRODUCTS)
def test_a_nodes_model_admits_whatever_its_product_admits(allowed: set[str], product: str) -> None:
    """Per-model filters (`JobSpec.allows`) never rule out a node its product admits."""
    if admits(frozenset(allowed), product):
        assert family_admits(frozenset(allowed), node_model(product))


@given(_PRODUCTS)
def test_unknown_products_are_kept_under_their_own_name(product: str) -> None:
    model = node_model(product)
    assert model == product or model.casefold() in FAMILIES


# -- nodes and both hosts ------------------------------------------------------------------


def gfd_cluster() -> ClusterState:
    def gpu_node(name: str, product: str) -> NodeSpec:
        model = node_model(product)
        return NodeSpec(name, 64_000, 256_000, 8, model, gpu_product=product)

    return ClusterState(
        [
            gpu_node("a0-40gb", A100_40),
            gpu_node("a1-80gb", A100_80),
            gpu_node("b0-mig", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"),
            gpu_node("v0", "Tesla-V100-SXM2-16GB"),
        ]
    )


def test_node_spec_keeps_the_product_and_checks_the_model() -> None:
    spec = NodeSpec("n", 1000, 1000, 8, "A100", gpu_product=A100_40)
    assert (spec.gpu_model, spec.product) == ("A100", A100_40)
    assert NodeSpec("n", 1000, 1000, 8, "A100", gpu_product="A100") == NodeSpec(
        "n", 1000, 1000, 8, "A100"
    )
    with pytest.raises(ValueError, match="product 'NVIDIA-A100-SXM4-40GB' is model 'A100'"):
        NodeSpec("n", 1000, 1000, 8, "V100", gpu_product=A100_40)


def test_policies_index_families_and_filter_products() -> None:
    state = gfd_cluster()
    assert state.gpu_models == ("A100", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "V100")
    names = [n.name for n in state.nodes]

    def where(*models: str) -> list[str]:
        spec = job("j", allowed_models=frozenset(models))
        assert capacity_mask(spec, spec.task, state).tolist() == [
            i in feasible_nodes(spec, spec.task, state) for i in range(len(names))
        ]
        return [names[i] for i in feasible_nodes(spec, spec.task, state)]

    assert where("A100") == ["a0-40gb", "a1-80gb"]
    assert where("a100-80gb") == ["a1-80gb"]
    assert where(A100_40) == ["a0-40gb"]
    assert where("V100", "A100-80GB") == ["a1-80gb", "v0"]
    assert where("H100") == []
    assert job("j", allowed_models=frozenset({"A100-80GB"})).allows("A100")


def test_the_contract_checks_the_product() -> None:
    spec = job("j", allowed_models=frozenset({"A100-80GB"}))
    check_shape(spec, Placement((TaskPlacement("a1-80gb", (0,), 1000),)), gfd_cluster())
    with pytest.raises(PlacementError, match="GPU model 'NVIDIA-A100-SXM4-40GB' is not allowed"):
        check_shape(spec, Placement((TaskPlacement("a0-40gb", (0,), 1000),)), gfd_cluster())


def test_the_share_fitter_keeps_a_variant_request_on_its_products() -> None:
    state = gfd_cluster()
    a100 = state.gpu_models.index("A100")
    wide = ShareFitter(state.scratch()).fit(job("w", allowed_models=frozenset({"A100"})), a100, 500)
    narrow = ShareFitter(state.scratch()).fit(
        job("n", allowed_models=frozenset({"A100-80GB"})), a100, 500
    )
    assert wide is not None and wide.tasks[0].node == "a0-40gb"
    assert narrow is not None and narrow.tasks[0].node == "a1-80gb"


BASELINES = ("bestfit", "clustering", "dotprod", "fgd", "fifo", "las", "packing", "random")


@pytest.mark.parametrize("policy", BASELINES)
def test_every_baseline_places_a_variant_request_on_its_product(policy: str) -> None:
    state = gfd_cluster()
    specs = [
        job("any-a100", gpus=2, allowed_models=frozenset({"A100"})),
        job("a100-80", gpus=2, allowed_models=frozenset({"A100-80GB"})),
    ]
    pending = [JobView(spec=s, status=JobStatus.PENDING) for s in specs]
    snapshot = Snapshot(cluster=state.view(), running=[], pending=pending, now=0.0)
    result = make_policy(policy).schedule(snapshot, Context(np.random.default_rng(0)))
    nodes = {
        d.job_id: {t.node for t in d.placement.tasks}
        for d in result.decisions
        if isinstance(d, Place)
    }
    assert nodes["a100-80"] == {"a1-80gb"}
    assert nodes["any-a100"] <= {"a0-40gb", "a1-80gb"}


def gfd_node(product: str) -> dict[str, object]:
    return {
        "metadata": {"name": "gpu-0", "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"cpu": "96", "memory": "768Gi", "nvidia.com/gpu": "8"}},
    }


def test_the_controller_reads_gfd_products_as_models() -> None:
    spec = node_spec(node_from_json(gfd_node(A100_40)), WholeGpu())
    assert (spec.gpu_model, spec.product) == ("A100", A100_40)
    rtx = node_spec(node_from_json(gfd_node("NVIDIA-GeForce-RTX-4090")), WholeGpu())
    assert rtx.gpu_model == "NVIDIA-GeForce-RTX-4090"


def test_the_canonical_cluster_file_keeps_products(tmp_path: Path) -> None:
    """A recorded cluster replays with the same models and products."""
    nodes = list(gfd_cluster().nodes)
    canonical.write_nodes(nodes, tmp_path / "nodes.csv")
    assert "NVIDIA-A100-SXM4-80GB" in (tmp_path / "nodes.csv").read_text()
    assert canonical.read_nodes(tmp_path / "nodes.csv") == nodes
