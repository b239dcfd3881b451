"""controller/dra without an API server: the decoder, CEL selectors with Kubernetes'
quantity and semver functions, the slice inventory (pools, generations), requests and
shares, and the cache charging claims. The real tier (tests/kube/test_kube_dra.py)
checks the same paths against kube-apiserver 1.37."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.dra.allocator import ClaimOutcome
from controller.dra.capacity import consumed
from controller.dra.inventory import CLAIMS, CLASSES, MECHANISM_LABEL, SLICES, DraState
from controller.dra.objects import (
    RequestPolicy,
    claim_from_json,
    node_selector_for,
    slice_from_json,
)
from controller.dra.selectors import SelectorError, _reads, _view, matches
from controller.kube.objects import Problem, pod_from_json
from controller.runtime import Controller
from controller.scheduling.cache import ClusterCache
from controller.scheduling.effects import BindOutcome
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.ledger import Charge
from controller.scheduling.scheduler import DRA_OFF, Scheduler
from policies import MILLI, NodeSpec, make_policy
from tests.test_controller_scheduler import FakeEffects

DRIVER = "gpu.nvidia.com"
GI = 2**30


def device(
    name: str, product: str = "NVIDIA A100-SXM4-80GB", memory: str = "80Gi", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "attributes": {
            "type": {"string": "gpu"},
            "productName": {"string": product},
            "driverVersion": {"version": "550.54.15"},
        },
        "capacity": {"memory": {"value": memory, **extra.pop("capacity", {})}},
        **extra,
    }


def slice_json(
    node: str, devices: list[dict[str, Any]], generation: int = 1, count: int = 1, name: str = ""
) -> dict[str, Any]:
    return {
        "metadata": {"name": name or f"{node}-{generation}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": count},
            "devices": devices,
        },
    }


def class_json(
    name: str = "gpu", expression: str = f"device.driver == '{DRIVER}'"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": expression}}]},
    }


def claim_json(
    name: str, uid: str, *requests: dict[str, Any], status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "1"},
        "spec": {"devices": {"requests": list(requests)}},
        "status": status or {},
    }


def exactly(
    count: int = 1, selectors: tuple[str, ...] = (), capacity: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"deviceClassName": "gpu", "count": count}
    if selectors:
        spec["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    if capacity:
        spec["capacity"] = {"requests": capacity}
    return {"name": "gpu", "exactly": spec}


def pod_json(name: str, uid: str, claim: str, node: str = "") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "schedulerName": "gpufleet",
            "nodeName": node,
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}],
            "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
        },
        "status": {"phase": "Running" if node else "Pending"},
    }


def allocation_of(node: str, gpu: str) -> dict[str, Any]:
    """A claim's allocation of one device of `node`'s pool, as a scheduler writes it."""
    return {
        "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": node, "device": gpu}]},
        "nodeSelector": node_selector_for(node),
    }


# -- selectors -------------------------------------------------------------------------


@pytest.fixture
def a100() -> Any:
    return slice_from_json(slice_json("n", [device("gpu-0")])).devices[0]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0", True),
        ("device.capacity['gpu.nvidia.com'].memory == quantity('81920Mi')", True),
        ("device.capacity['gpu.nvidia.com'].memory.isGreaterThan(quantity('80Gi'))", False),
        ("device.attributes['gpu.nvidia.com'].productName.startsWith('NVIDIA A100')", True),
        ("device.attributes['gpu.nvidia.com'].driverVersion.isLessThan(semver('550.100.0'))", True),
        ("device.attributes['gpu.nvidia.com'].driverVersion.major() == 550", True),
        ("'uuid' in device.attributes['other.example.com']", False),
        ("device.allowMultipleAllocations", False),
    ],
)
def test_selectors_read_attributes_and_capacity_as_kubernetes_does(
    a100: Any, expression: str, expected: bool
) -> None:
    assert matches(expression, a100) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("device.attributes['gpu.nvidia.com'].cudaCores > 10", "cudaCores"),
        ("device.driver ==", "does not parse"),
        ("device.driver", "not a bool"),
    ],
)
def test_a_selector_that_cannot_decide_is_an_error_naming_why(
    a100: Any, expression: str, message: str
) -> None:
    with pytest.raises(SelectorError, match=message):
        matches(expression, a100)


# -- inventory ---------------------------------------------------------------------------


def test_only_a_pools_newest_generation_counts_in_natural_order() -> None:
    state = DraState()
    old = slice_json("n", [device("gpu-0"), device("gpu-1")], generation=1)
    new = slice_json("n", [device(f"gpu-{i}") for i in (10, 2, 1)], generation=2)
    state.replace(SLICES, [old, new])
    assert [d.name for d in state.nodes["n"].devices] == ["gpu-1", "gpu-2", "gpu-10"]
    assert state.nodes["n"].complete


def test_incomplete_and_invalid_pools() -> None:
    state = DraState()
    half = slice_json("a", [device("gpu-0")], count=2)
    twice = slice_json("b", [device("gpu-0"), device("gpu-0")])
    mig = slice_json("c", [{**device("gpu-0-mig-1g"), "attributes": {"type": {"string": "mig"}}}])
    state.replace(SLICES, [half, twice, mig])
    assert not state.nodes["a"].complete
    assert "b" not in state.nodes  # names a device twice
    assert not state.nodes.get("c", None) or not state.nodes["c"].devices


def test_a_dra_node_takes_count_and_model_from_its_slice() -> None:
    state = DraState()
    state.replace(SLICES, [slice_json("n", [device("gpu-0"), device("gpu-1")])])
    spec = state.adapt(NodeSpec("n", 8000, 1024))
    assert (spec.gpus, spec.gpu_model, spec.product) == (2, "A100", "NVIDIA A100-SXM4-80GB")
    plugin = state.adapt(NodeSpec("m", 8000, 1024, 4, "T4"))
    assert plugin.labels[MECHANISM_LABEL] == "device-plugin"


def two_node_state(shareable: bool = False) -> DraState:
    state = DraState()
    extra: dict[str, Any] = {}
    if shareable:
        extra = {
            "allowMultipleAllocations": True,
            "capacity": {
                "requestPolicy": {"default": "80Gi", "validRange": {"min": "1Gi", "step": "4Gi"}}
            },
        }
    big = [device(f"gpu-{i}", **dict(extra)) for i in range(4)]
    small = [device(f"gpu-{i}", "Tesla T4", "16Gi") for i in range(2)]
    state.replace(SLICES, [slice_json("big", big), slice_json("small", small)])
    state.replace(CLASSES, [class_json()])
    return state


def ask_for(state: DraState, *requests: dict[str, Any]) -> Any:
    state.apply(CLAIMS, "ADDED", claim_json("c", "claim-uid", *requests))
    return state.ask(pod_from_json(pod_json("p", "pod-uid", "c")))


def test_a_memory_selector_fits_nodes_whose_every_gpu_matches() -> None:
    state = two_node_state()
    ask = ask_for(
        state,
        exactly(2, ("device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0",)),
    )
    assert (ask.num_gpus, ask.gpu_milli, ask.models) == (
        2,
        MILLI,
        frozenset({"NVIDIA A100-SXM4-80GB"}),
    )
    (label,) = [k for k in ask.labels]
    assert state.adapt(NodeSpec("big", 1, 1)).labels[label] == "true"
    assert label not in state.adapt(NodeSpec("small", 1, 1)).labels


def test_a_selector_failing_on_a_device_is_a_problem_naming_the_claim() -> None:
    state = two_node_state()
    ask = ask_for(state, exactly(1, ("device.attributes['gpu.nvidia.com'].cudaCores > 1",)))
    assert isinstance(ask, Problem)
    assert ask.field.startswith("resourceclaims/c.spec.devices.requests[gpu]")
    assert "cudaCores" in ask.message


def test_an_unknown_class_is_a_problem() -> None:
    state = two_node_state()
    request = exactly()
    request["exactly"]["deviceClassName"] = "nope"
    ask = ask_for(state, request)
    assert isinstance(ask, Problem) and "no DeviceClass 'nope'" in ask.message


def test_a_capacity_request_is_a_share_rounded_up_by_the_policy() -> None:
    """17 GiB on an 80 GiB device whose policy steps by 4 GiB from 1 GiB: charged 17 GiB
    (1 + 4·4), which is 212.5 milli-GPU, rounded up to 213 (the 16 GiB T4s cannot serve
    it; a device that is not shareable would be taken whole)."""
    state = two_node_state(shareable=True)
    ask = ask_for(state, exactly(capacity={"memory": "17Gi"}))
    assert (ask.num_gpus, ask.gpu_milli) == (1, 213)
    (planned,) = state.plan(ask, "big", (2,), ask.gpu_milli)
    (result,) = planned.results
    assert (result.device, result.consumed["memory"]) == ("gpu-2", 17 * GI)
    assert result.share_id


def test_an_allocated_claim_pins_the_pod_and_asks_for_no_new_gpu() -> None:
    state = two_node_state()
    allocation = allocation_of("small", "gpu-1")
    state.apply(
        CLAIMS, "ADDED", claim_json("c", "claim-uid", exactly(), status={"allocation": allocation})
    )
    ask = state.ask(pod_from_json(pod_json("p", "pod-uid", "c")))
    assert ask.num_gpus == 0 and ask.labels == {"dra.gpufleet.io/node": "small"}
    assert state.claim_charges("claim-uid") == {
        "claim/claim-uid/0": Charge("small", (1,), MILLI, 0, 0)
    }
    as_asked = state.ask(pod_from_json(pod_json("p", "pod-uid", "c")), as_new=True)
    assert as_asked.num_gpus == 1


@given(
    value_gib=st.integers(1, 200),
    minimum_gib=st.integers(1, 8),
    step_gib=st.integers(1, 8),
    wanted_gib=st.lists(st.integers(1, 64), min_size=1, max_size=12),
)
def test_shares_that_fit_in_milli_never_exceed_the_device(
    value_gib: int, minimum_gib: int, step_gib: int, wanted_gib: list[int]
) -> None:
    """Whatever the policy and requests, shares packed while their milli-GPU sum stays
    within 1000 charge at most the device's capacity (milli is rounded up)."""
    policy = RequestPolicy(minimum=Decimal(minimum_gib * GI), step=Decimal(step_gib * GI))
    state = DraState()
    extra = {
        "allowMultipleAllocations": True,
        "capacity": {
            "requestPolicy": {"validRange": {"min": f"{minimum_gib}Gi", "step": f"{step_gib}Gi"}}
        },
    }
    state.replace(SLICES, [slice_json("n", [device("gpu-0", memory=f"{value_gib}Gi", **extra)])])
    (gpu,) = state.nodes["n"].devices
    milli_sum, total = 0, Decimal(0)
    for want in wanted_gib:
        charged = consumed(gpu, {"memory": Decimal(want * GI)})["memory"]
        assert (
            charged == policy.round_up(Decimal(want * GI))
            or charged == gpu.capacity_of("memory").value
        )
        milli = max(1, math.ceil(charged / gpu.capacity_of("memory").value * MILLI))
        if milli_sum + milli <= MILLI:
            milli_sum += milli
            total += charged
    assert total <= value_gib * GI


def test_the_cache_charges_a_shared_claim_once_for_all_its_pods() -> None:
    state = two_node_state()
    cache = ClusterCache(WholeGpu(), dra=state)
    cache.replace(
        "nodes",
        [{"metadata": {"name": "small"}, "status": {"allocatable": {"cpu": "8", "memory": "8Gi"}}}],
    )
    allocation = allocation_of("small", "gpu-0")
    cache.apply(
        CLAIMS, "ADDED", claim_json("c", "claim-uid", exactly(), status={"allocation": allocation})
    )
    cache.replace(
        "pods", [pod_json("p1", "u1", "c", node="small"), pod_json("p2", "u2", "c", node="small")]
    )
    state_arrays = cache.ledger.state
    assert state_arrays is not None
    assert list(state_arrays.gpu_free[state_arrays.node_index["small"]]) == [0, MILLI]
    views = cache.charges()
    assert views["u1"].gpus == views["u2"].gpus == (0,)
    cache.apply(CLAIMS, "DELETED", claim_json("c", "claim-uid", exactly()))
    assert list(state_arrays.gpu_free[state_arrays.node_index["small"]]) == [MILLI, MILLI]


def test_pod_claims_are_read_from_spec_and_status() -> None:
    pod = pod_json("p", "u", "shared")
    pod["spec"]["resourceClaims"] += [
        {"name": "made", "resourceClaimTemplateName": "t"},
        {"name": "later", "resourceClaimTemplateName": "t"},
        {"name": "none", "resourceClaimTemplateName": "t"},
    ]
    pod["status"]["resourceClaimStatuses"] = [
        {"name": "made", "resourceClaimName": "p-made-x1"},
        {"name": "none", "resourceClaimName": None},
    ]
    claims = pod_from_json(pod).claims
    assert [(c.name, c.claim, c.waiting) for c in claims] == [
        ("gpu", "shared", False),
        ("made", "p-made-x1", False),
        ("later", None, True),
        ("none", None, False),
    ]


def test_bad_claim_fields_are_problems_not_exceptions() -> None:
    claim = claim_from_json(
        claim_json("c", "u", {"name": "r", "exactly": {"deviceClassName": "gpu", "count": 0}})
    )
    assert claim.problems and "count 0" in claim.problems[0].message
    first = claim_from_json(claim_json("c", "u", {"name": "r", "firstAvailable": []}))
    assert "firstAvailable" in first.problems[0].message
    broken = slice_from_json(slice_json("n", [{"name": "gpu-0", "attributes": {"x": {}}}]))
    assert broken.devices == () and "attribute 'x'" in str(broken.problems[0])


def test_devices_alike_in_what_a_selector_reads_share_its_answer() -> None:
    """The view a selector sees holds only what it names: two GPUs differing only in
    UUID look alike to a memory selector, not to a UUID selector; a macro that can
    enumerate a map sees everything."""
    first, second = (
        slice_from_json(
            slice_json("n", [{**device("gpu-0"), "attributes": {"uuid": {"string": uuid}}}])
        ).devices[0]
        for uuid in ("GPU-a", "GPU-b")
    )
    memory = "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0"
    uuid = "device.attributes['gpu.nvidia.com'].uuid == 'GPU-a'"
    enumerating = "device.attributes['gpu.nvidia.com'].exists(k, k == 'uuid')"
    assert _view(first, _reads(memory)) == _view(second, _reads(memory))
    assert _view(first, _reads(uuid)) != _view(second, _reads(uuid))
    assert _reads(enumerating) is None
    assert (matches(uuid, first), matches(uuid, second)) == (True, False)
    assert matches(enumerating, first)


class FakeClaims:
    """A claim writer that reserves as told and records unreserves."""

    def __init__(self, outcome: ClaimOutcome) -> None:
        self.outcome = outcome
        self.reserved: list[str] = []
        self.unreserved: list[str] = []

    async def reserve(
        self, pod: Any, planned: list[Any], now: float
    ) -> tuple[ClaimOutcome, list[Any]]:
        self.reserved.append(pod.name)
        return self.outcome, planned if self.outcome is ClaimOutcome.RESERVED else []

    async def unreserve(self, pod: Any, written: list[Any]) -> None:
        self.unreserved += [p.claim.name for p in written]


@pytest.mark.parametrize(
    ("claims_outcome", "bind_outcome", "unreserved"),
    [
        (ClaimOutcome.RESERVED, BindOutcome.BOUND, []),
        (ClaimOutcome.RESERVED, BindOutcome.CONFLICT, ["c"]),
        (ClaimOutcome.CONFLICT, BindOutcome.BOUND, []),
    ],
)
def test_the_binding_cycle_writes_claims_first_and_rolls_back(
    claims_outcome: ClaimOutcome, bind_outcome: BindOutcome, unreserved: list[str]
) -> None:
    """Claims are reserved before the bind; a failed bind unreserves them; a claim write
    that loses binds nothing; either failure frees the in-flight devices for the next
    plan."""

    async def main() -> None:
        state = two_node_state()
        cache = ClusterCache(WholeGpu(), dra=state)
        node = {
            "metadata": {"name": "big"},
            "status": {"allocatable": {"cpu": "8", "memory": "8Gi"}},
        }
        cache.replace("nodes", [node])
        cache.apply(CLAIMS, "ADDED", claim_json("c", "claim-uid", exactly(2)))
        effects = FakeEffects(cache)
        effects.outcomes["p"] = bind_outcome
        claims = FakeClaims(claims_outcome)
        scheduler = Scheduler(
            make_policy("bestfit"), cache, effects, clock=lambda: 1.0, claims=claims
        )  # type: ignore[arg-type]
        cache.apply("pods", "ADDED", pod_json("p", "pod-uid", "c"))
        scheduler.run_pass()
        index = cache.ledger.state.node_index["big"]
        assert int(cache.ledger.state.gpu_free[index].sum()) == 2 * MILLI  # two held in flight
        while scheduler._inflight:  # this pass's binding cycle, without a next pass
            await asyncio.gather(*scheduler._inflight)
        assert claims.reserved == ["p"]
        assert [name for name, _, _ in effects.binds] == (
            ["p"] if claims_outcome is ClaimOutcome.RESERVED else []
        )
        assert claims.unreserved == unreserved
        held = (
            2 * MILLI
            if bind_outcome is BindOutcome.BOUND
            and not unreserved
            and claims_outcome is ClaimOutcome.RESERVED
            else 4 * MILLI
        )
        assert int(cache.ledger.state.gpu_free[index].sum()) == held

    asyncio.run(main())


def shareable_a100s(count: int) -> list[dict[str, Any]]:
    """80 GiB A100s whose memory is handed out in 1 GiB steps (a 40 GiB claim is 500
    milli-GPU)."""
    policy = {"requestPolicy": {"default": "80Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}}
    return [
        device(f"gpu-{i}", allowMultipleAllocations=True, capacity=dict(policy))
        for i in range(count)
    ]


@pytest.mark.parametrize("shareable", [True, False])
def test_a_dra_node_shares_its_gpus_when_its_devices_do_whatever_the_backend(
    shareable: bool,
) -> None:
    """Claims are served by the DRA driver, not the device plugin `--backend` names: a DRA
    node's GPUs can be shared exactly when its devices allow several allocations."""
    state = DraState()
    devices = shareable_a100s(2) if shareable else [device("gpu-0"), device("gpu-1")]
    state.replace(SLICES, [slice_json("n", devices)])
    for backend_shares in (True, False):
        spec = state.adapt(NodeSpec("n", 8000, 1024, shares_gpus=backend_shares))
        assert spec.shares_gpus is shareable
    plugin = state.adapt(NodeSpec("m", 8000, 1024, 4, "T4", shares_gpus=False))
    assert not plugin.shares_gpus  # a device-plugin node keeps its backend's answer


def test_fgd_places_two_40gib_claims_per_shareable_80gib_device_under_the_whole_backend() -> None:
    """Nine pods, each with a claim for 40 GiB of a shareable 80 GiB A100 (four on the
    node), under the default `--backend=whole`: one pass places eight, two per device,
    and the ninth waits, as the real tier's FGD test expects. (With the node taken as not
    sharing, each 500 milli share held a whole device and only four were placed.)"""
    state = DraState()
    state.replace(SLICES, [slice_json("big", shareable_a100s(4))])
    state.replace(CLASSES, [class_json()])
    cache = ClusterCache(WholeGpu(), dra=state)
    node = {"metadata": {"name": "big"}, "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}}}
    cache.replace("nodes", [node])
    for i in range(9):
        request = exactly(capacity={"memory": "40Gi"})
        cache.apply(CLAIMS, "ADDED", claim_json(f"c{i}", f"claim-{i}", request))
        cache.apply("pods", "ADDED", pod_json(f"p{i}", f"pod-{i}", f"c{i}"))
    effects = FakeEffects(cache)
    claims = FakeClaims(ClaimOutcome.RESERVED)

    async def main() -> None:
        scheduler = Scheduler(make_policy("fgd"), cache, effects, clock=lambda: 1.0, claims=claims)  # type: ignore[arg-type]
        scheduler.run_pass()
        while scheduler._inflight:
            await asyncio.gather(*scheduler._inflight)

    asyncio.run(main())
    assert len(effects.binds) == 8 and len(claims.reserved) == 8
    placed = [
        (notes["gpufleet.io/assigned-gpus"], notes["gpufleet.io/assigned-milli"])
        for *_, notes in effects.binds
    ]
    assert sorted(placed) == [(str(g), "500") for g in range(4) for _ in range(2)]
    ledger = cache.ledger.state
    assert ledger is not None
    assert list(ledger.gpu_free[ledger.node_index["big"]]) == [0, 0, 0, 0]


def test_all_takes_every_gpu_of_complete_nodes_of_one_size() -> None:
    """`All` on nodes of 4 and 2 matching GPUs (and an incomplete pool of 2): the job
    takes 2 GPUs, on the complete 2-GPU node only, and the plan allocates both."""
    state = two_node_state()
    state.apply(SLICES, "ADDED", slice_json("partial", [device("gpu-0"), device("gpu-1")], count=2))
    request = exactly()
    request["exactly"] = {"deviceClassName": "gpu", "allocationMode": "All"}
    ask = ask_for(state, request)
    assert ask.num_gpus == 2
    (label,) = ask.labels
    fits = {
        n for n in ("big", "small", "partial") if label in state.adapt(NodeSpec(n, 1, 1)).labels
    }
    assert fits == {"small"}
    (planned,) = state.plan(ask, "small", (0, 1), MILLI)
    assert [r.device for r in planned.results] == ["gpu-0", "gpu-1"]


def test_a_request_no_node_fits_is_explained() -> None:
    state = two_node_state()
    huge = "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('100Gi')) >= 0"
    ask = ask_for(state, exactly(1, (huge,)))
    assert ask.models == frozenset()
    assert "ResourceClaims' selectors" in state.unfit(ask.labels)
    fits = ask_for(state, exactly(1))
    assert state.unfit(fits.labels) == ""


def test_with_dra_off_a_pod_with_claims_is_reported_not_bound() -> None:
    async def main() -> None:
        cache = ClusterCache(WholeGpu(), dra=two_node_state())
        node = {
            "metadata": {"name": "big"},
            "status": {"allocatable": {"cpu": "8", "memory": "8Gi"}},
        }
        cache.replace("nodes", [node])
        effects = FakeEffects(cache)
        scheduler = Scheduler(make_policy("bestfit"), cache, effects, clock=lambda: 1.0)  # type: ignore[arg-type]
        cache.apply("pods", "ADDED", pod_json("p", "pod-uid", "c"))
        scheduler.run_pass()
        while scheduler._inflight:
            await asyncio.gather(*scheduler._inflight)
        assert effects.binds == []
        assert effects.reports == [("p", f"invalid spec.resourceClaims: {DRA_OFF}")]

    asyncio.run(main())


class AnswersWith:
    """An API whose every request answers `status` (a cluster without DRA)."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def request(self, method: str, path: str, **_: Any) -> tuple[int, Any]:
        return self.status, {}


@pytest.mark.parametrize(("status", "dra_on"), [(404, False), (403, False), (200, True)])
def test_a_cluster_without_dra_turns_it_off_instead_of_never_syncing(
    status: int, dra_on: bool
) -> None:
    controller = Controller(AnswersWith(status), make_policy("bestfit"))  # type: ignore[arg-type]
    asyncio.run(controller._check_dra())
    assert bool(controller.dra) is dra_on
    assert (controller.scheduler.claims is not None) is dra_on
