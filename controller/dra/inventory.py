"""The DRA side of the cluster view: which GPUs each node has (from ResourceSlices),
which of them claims hold (from ResourceClaims and this scheduler's in-flight
allocations), and what a pod's claims ask for.

A node's GPUs are the devices of node-local slices (`spec.nodeName`) whose driver is a
GPU driver (`gpu.nvidia.com` by default) and whose `type` attribute, if any, is `gpu`
(MIG and other partitions are not whole GPUs). Only a pool's highest generation
counts; a pool whose slices at that generation are not all visible yet is incomplete
(its devices count, but `All` requests skip it); a pool naming one device twice is
invalid and contributes nothing. Devices are GPU indices 0..n-1 in natural name order
(`gpu-2` before `gpu-10`), the indices policies and the ledger use.

What a request may use is decided per node: a node qualifies when *every* GPU on it
satisfies the request's class and request selectors and offers the requested capacity
(policies see one GPU model per node, so a node is taken as a whole; a selector that
singles out one device of a node, e.g. by UUID, matches no node). The qualifying nodes
carry a label made for the request (`dra.gpufleet.io/fits-<hash>`) that the job's node
selector names, so every policy's existing node filter honours DRA selectors.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from controller.dra.capacity import charged, consumed, share_milli
from controller.dra.objects import (
    AllocatedDevice,
    Device,
    DeviceClass,
    DeviceRequest,
    ResourceClaim,
    ResourceSlice,
    claim_from_json,
    class_from_json,
    slice_from_json,
)
from controller.dra.selectors import SelectorError, matches
from controller.kube.objects import PodRecord, Problem
from controller.scheduling.ledger import Charge
from policies import MILLI, NodeSpec
from policies.gpu_models import DRA_PRODUCT_ATTRIBUTES, dra_product, node_model

log = logging.getLogger(__name__)

SLICES = "resourceslices"
CLASSES = "deviceclasses"
CLAIMS = "resourceclaims"
KINDS = (SLICES, CLASSES, CLAIMS)
GPU_DRIVERS = ("gpu.nvidia.com",)
LABEL_DOMAIN = "dra.gpufleet.io"
NODE_LABEL = f"{LABEL_DOMAIN}/node"
"""Every DRA node carries its own name here: a pod whose claim is already allocated is
pinned to the allocation's node through it."""
MECHANISM_LABEL = f"{LABEL_DOMAIN}/gpus"
"""In a cluster with DRA nodes, every GPU node says how its GPUs are handed out (`dra`
or `device-plugin`), and a pod asking for `nvidia.com/gpu` (or another device-plugin
resource) selects `device-plugin`: each pod is placed by the mechanism it asks for, and
a node's GPUs are counted once, by one mechanism (docs/dra.md)."""
DEVICE_PLUGIN = "device-plugin"
_DIGITS = re.compile(r"(\d+)")

RequestPart = tuple[tuple[str, ...], tuple[tuple[str, Decimal], ...], bool]
"""What decides where one request fits: its selectors, capacity requests, `All`."""
RequestKey = tuple[RequestPart, ...]


@dataclass(frozen=True, slots=True)
class NodeGpus:
    devices: tuple[Device, ...]
    complete: bool
    index: Mapping[tuple[str, str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClaimAllocation:
    """What this scheduler decided for one claim of a pod: the results to write (None
    when the claim was already allocated and only needs the pod's reservation)."""

    claim: ResourceClaim
    node: str
    results: tuple[AllocatedDevice, ...] | None
    config: tuple[Mapping[str, Any], ...] = ()
    """`allocation.devices.config`: each class's config once, then the claim's."""


@dataclass(frozen=True, slots=True)
class DraAsk:
    """What a pending pod's claims ask of the policy."""

    num_gpus: int
    gpu_milli: int
    labels: Mapping[str, str]
    """Node-selector terms to add (the request's fits label, the pinned node)."""
    claims: tuple[ResourceClaim, ...]
    """The pod's claims in spec order (unallocated and allocated)."""
    models: frozenset[str] | None = None
    """The GPU products of the nodes the requests fit, when that is not every DRA node
    (so policies that reason per GPU model, Gavel and Sia, see the restriction)."""


def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(name))


class DraState:
    """Implements the informer handler for slices, classes and claims. `replace`/`apply`
    return what changed: "nodes" (GPU inventory or classes), "claims", or ""."""

    def __init__(
        self,
        gpu_drivers: Sequence[str] = GPU_DRIVERS,
        product_attributes: Sequence[str] = DRA_PRODUCT_ATTRIBUTES,
    ) -> None:
        self.gpu_drivers = frozenset(gpu_drivers)
        self.product_attributes = tuple(product_attributes)
        self.slices: dict[str, ResourceSlice] = {}
        self.classes: dict[str, DeviceClass] = {}
        self.claims: dict[str, ResourceClaim] = {}
        self._by_name: dict[str, str] = {}
        self.nodes: dict[str, NodeGpus] = {}
        self.pending: dict[str, ClaimAllocation] = {}
        """Claim uid → the allocation this scheduler is writing (its devices are held)."""
        self.fits_labels: dict[RequestKey, str] = {}
        self.labels_changed = False
        """A request shape got a new node label since the nodes were last adapted."""
        self._fits: dict[RequestKey, frozenset[str]] = {}

    # -- informer handler -------------------------------------------------------------

    def replace(self, kind: str, objects: list[dict[str, Any]]) -> str:
        if kind == SLICES:
            self.slices = {s.name: s for s in map(slice_from_json, objects)}
            return self._inventory_changed()
        if kind == CLASSES:
            self.classes = {c.name: c for c in map(class_from_json, objects)}
            return self._inventory_changed()
        self.claims = {c.uid: c for c in map(claim_from_json, objects)}
        self._by_name = {c.key: c.uid for c in self.claims.values()}
        return "claims"

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> str:
        if kind in (SLICES, CLASSES):
            record = slice_from_json(obj) if kind == SLICES else class_from_json(obj)
            known: dict[str, Any] = self.slices if kind == SLICES else self.classes
            if event == "DELETED":
                known.pop(record.name, None)
            else:
                known[record.name] = record
            return self._inventory_changed()
        claim = claim_from_json(obj)
        if event == "DELETED":
            self.claims.pop(claim.uid, None)
            self._by_name.pop(claim.key, None)
            self.pending.pop(claim.uid, None)
        else:
            self.claims[claim.uid] = claim
            self._by_name[claim.key] = claim.uid
        return "claims"

    def _inventory_changed(self) -> str:
        self.nodes = self._node_gpus()
        self._fits.clear()
        return "nodes"

    def _node_gpus(self) -> dict[str, NodeGpus]:
        pools: dict[tuple[str, str], list[ResourceSlice]] = {}
        for record in self.slices.values():
            if record.driver in self.gpu_drivers and record.node_name and not record.problems:
                pools.setdefault((record.driver, record.pool), []).append(record)
        found: dict[str, list[Device]] = {}
        complete: dict[str, bool] = {}
        for (driver, pool), records in pools.items():
            newest = max(r.generation for r in records)
            current = [r for r in records if r.generation == newest]
            devices = [d for r in current for d in r.devices if d.is_gpu]
            if len({d.name for d in devices}) != len(devices):
                log.warning("DRA pool %s/%s names a device twice: ignored", driver, pool)
                continue
            whole = len(current) >= max(r.slice_count for r in current)
            for record in current:
                node = record.node_name
                found.setdefault(node, []).extend(d for d in record.devices if d.is_gpu)
                complete[node] = complete.get(node, True) and whole
        nodes = {}
        for node, devices in found.items():
            ordered = tuple(sorted(devices, key=lambda d: (_natural(d.name), d.pool, d.driver)))
            index = {d.key: i for i, d in enumerate(ordered)}
            nodes[node] = NodeGpus(ordered, complete[node], index)
        return nodes

    # -- the cluster view -------------------------------------------------------------

    def adapt(self, spec: NodeSpec) -> NodeSpec:
        """A node's spec with its DRA GPUs (count, model from the product attribute,
        whether they can be shared) and the labels DRA requests select it by. Without
        DRA nodes in the cluster, every node is unchanged; with some, device-plugin GPU
        nodes say so.

        A DRA node's GPUs are shared when every device allows several allocations (as
        `_size` offers a share only then): the DRA driver hands them out, so the device
        plugin's answer (`--backend=whole` shares nothing) does not apply to them."""
        gpus = self.nodes.get(spec.name)
        if gpus is None or not gpus.devices:
            if spec.gpus and self.nodes:
                return replace(spec, labels={**spec.labels, MECHANISM_LABEL: DEVICE_PLUGIN})
            return spec
        product = self.product(spec.name)
        labels = dict(spec.labels)
        labels[NODE_LABEL] = spec.name
        labels[MECHANISM_LABEL] = "dra"
        for key, label in self.fits_labels.items():
            if spec.name in self._eligible_or_none(key):
                labels[label] = "true"
        return replace(
            spec,
            gpus=len(gpus.devices),
            gpu_model=node_model(product),
            gpu_product=product,
            labels=labels,
            shares_gpus=all(d.shareable for d in gpus.devices),
        )

    def unfit(self, node_selector: Mapping[str, str]) -> str:
        """Why a job selecting DRA labels fits no node, as a note to its report."""
        for key, label in self.fits_labels.items():
            if label in node_selector and not self._eligible_or_none(key):
                return "; no node's GPUs all satisfy its ResourceClaims' selectors and capacity"
        return ""

    def product(self, node: str) -> str:
        """The GPU product a DRA node reports (its first GPU's)."""
        first = self.nodes[node].devices[0]
        attributes = first.attributes.get(first.driver, {})
        return dra_product(attributes, self.product_attributes) or "unknown"

    def device_plugin_selector(self) -> dict[str, str]:
        """What a pod asking for device-plugin GPUs selects (nothing without DRA nodes)."""
        return {MECHANISM_LABEL: DEVICE_PLUGIN} if self.nodes else {}

    def claim_charges(self, claim_uid: str) -> dict[str, Charge]:
        """Ledger charges (`claim/<uid>/<i>`) for the devices a claim holds: its
        allocation, else this scheduler's in-flight allocation for it."""
        claim = self.claims.get(claim_uid)
        results: Iterable[AllocatedDevice] = ()
        node = ""
        if claim is not None and claim.allocated is not None:
            results, node = claim.allocated, claim.allocation_node
        elif claim_uid in self.pending:
            planned = self.pending[claim_uid]
            results, node = planned.results or (), planned.node
        charges = {}
        for i, result in enumerate(results):
            if result.admin_access:
                continue
            where = self._device_node(result, node)
            if where is None:
                continue
            name, index, device = where
            milli = share_milli(device, result.consumed) if result.share_id else MILLI
            charges[f"claim/{claim_uid}/{i}"] = Charge(name, (index,), milli, 0, 0)
        return charges

    def _device_node(self, result: AllocatedDevice, hint: str) -> tuple[str, int, Device] | None:
        candidates = [hint] if hint in self.nodes else list(self.nodes)
        for name in candidates:
            gpus = self.nodes[name]
            index = gpus.index.get(result.key)
            if index is not None:
                return name, index, gpus.devices[index]
        return None

    # -- pods' requests ---------------------------------------------------------------

    def pod_claims(self, pod: PodRecord) -> tuple[ResourceClaim, ...] | str:
        """The pod's claims in spec order, or why the pod must wait for them."""
        claims = []
        for entry in pod.claims:
            if entry.claim is None:
                if entry.waiting:
                    return f"claim {entry.name!r} is not created yet"
                continue
            uid = self._by_name.get(f"{pod.namespace}/{entry.claim}")
            claim = self.claims.get(uid or "")
            if claim is None:
                return f"resourceclaim {entry.claim} is not seen yet"
            if claim.owner_pod and claim.owner_pod != pod.uid:
                return f"resourceclaim {entry.claim} belongs to another pod"
            claims.append(claim)
        return tuple(claims)

    def ask(self, pod: PodRecord, as_new: bool = False) -> DraAsk | Problem | str:
        """What the pod's claims ask of the policy; a `Problem` when a claim cannot be
        served as written (reported on the pod), a string when the pod must wait.
        `as_new`: size the claims as if none were allocated yet (what the pod asked
        for, as the recorder writes it)."""
        claims = self.pod_claims(pod)
        if isinstance(claims, str):
            return claims
        labels: dict[str, str] = {}
        num_gpus, milli = 0, MILLI
        models: frozenset[str] | None = None
        requests: list[tuple[ResourceClaim, DeviceRequest]] = []
        for claim in claims:
            if claim.problems:
                return claim.first_problem()
            if claim.deleting:
                return f"resourceclaim {claim.name} is being deleted"
            if claim.uid in self.pending and not as_new:
                return f"resourceclaim {claim.name} is being allocated for another pod"
            if claim.allocated is not None and not as_new:
                pinned = claim.allocation_node
                if not pinned or labels.get(NODE_LABEL, pinned) != pinned:
                    return Problem(
                        f"resourceclaims/{claim.name}.status.allocation.nodeSelector",
                        "gpufleet serves claims allocated on one node only",
                    )
                labels[NODE_LABEL] = pinned
                continue
            requests.extend((claim, r) for r in claim.requests)
        if requests:
            try:
                key = self._request_key(requests)
                eligible = self._eligible(key)
            except _ClaimError as err:
                return err.problem
            except SelectorError as err:  # requests that pass alone, failing together
                names = ", ".join(sorted({c.name for c, _ in requests}))
                return Problem(f"resourceclaims/{names}.spec.devices.requests", str(err))
            labels[self._label(key)] = "true"
            num_gpus, milli = self._size(requests, eligible)
            if eligible != {n for n, g in self.nodes.items() if g.devices}:
                models = frozenset(self.product(n) for n in eligible)
        return DraAsk(num_gpus, milli if num_gpus else 0, labels, claims, models)

    def _label(self, key: RequestKey) -> str:
        if key not in self.fits_labels:
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
            self.fits_labels[key] = f"{LABEL_DOMAIN}/fits-{digest}"
            self.labels_changed = True
        return self.fits_labels[key]

    def _request_key(self, requests: list[tuple[ResourceClaim, DeviceRequest]]) -> RequestKey:
        """What decides where the requests fit: per request its selectors (class's and
        own), capacity and mode, not its claim's name, so the claims pods make from one
        template share one key (and one node label). Each request is checked alone
        first, so a selector that fails is reported with its claim and request."""
        parts: list[RequestPart] = []
        for claim, request in requests:
            device_class = self.classes.get(request.device_class)
            where = f"resourceclaims/{claim.name}.spec.devices.requests[{request.name}]"
            if device_class is None:
                raise _ClaimError(
                    Problem(
                        f"{where}.exactly.deviceClassName",
                        f"no DeviceClass {request.device_class!r}",
                    )
                )
            if device_class.problems:
                raise _ClaimError(device_class.first_problem())
            selectors = device_class.selectors + request.selectors
            capacity = tuple(sorted(request.capacity.items()))
            part = (selectors, capacity, request.all_devices)
            try:
                self._eligible((part,))
            except SelectorError as err:
                raise _ClaimError(Problem(f"{where}.selectors", str(err))) from None
            parts.append(part)
        return tuple(parts)

    def _eligible(self, key: RequestKey) -> frozenset[str]:
        """Nodes whose every GPU serves every request in `key` (cached until the
        inventory changes). Raises `SelectorError` if a selector fails on a device."""
        if key in self._fits:
            return self._fits[key]
        eligible = []
        for node, gpus in self.nodes.items():
            if gpus.devices and all(
                self._serves(device, part, gpus.complete) for device in gpus.devices for part in key
            ):
                eligible.append(node)
        if eligible and any(part[2] for part in key):
            # `All` takes every GPU of its node: the nodes must agree on how many.
            fewest = min(len(self.nodes[n].devices) for n in eligible)
            eligible = [n for n in eligible if len(self.nodes[n].devices) == fewest]
        found = frozenset(eligible)
        self._fits[key] = found
        return found

    def _eligible_or_none(self, key: RequestKey) -> frozenset[str]:
        try:
            return self._eligible(key)
        except SelectorError:
            return frozenset()  # reported on the pods when they are next asked about

    def _serves(self, device: Device, part: RequestPart, complete: bool) -> bool:
        selectors, capacity, all_devices = part
        if device.tainted or device.binds_later or (all_devices and not complete):
            return False
        for i, expression in enumerate(selectors):
            try:
                if not matches(expression, device):
                    return False
            except SelectorError as err:
                raise SelectorError(f"[{i}] {expression!r} {err}") from None
        return all(charged(device, name, amount) is not None for name, amount in capacity)

    def _size(
        self, requests: list[tuple[ResourceClaim, DeviceRequest]], eligible: frozenset[str]
    ) -> tuple[int, int]:
        """(GPUs, milli-GPU per GPU) for the requests on the eligible nodes. `All` takes
        every GPU of a node (the eligible nodes are those with the fewest GPUs among the
        ones that match, so they all have that many). A single one-device request with
        capacity on shareable devices takes a share: its charged capacity as a fraction
        of the device's, rounded up (the largest such fraction over eligible nodes)."""
        counts = [len(self.nodes[n].devices) for n in eligible]
        total = 0
        for _claim, request in requests:
            total += (min(counts) if counts else 1) if request.all_devices else request.count
        only = requests[0][1] if len(requests) == 1 else None
        if only is None or only.all_devices or only.count != 1 or not only.capacity:
            return total, MILLI
        shares = [
            share_milli(device, consumed(device, only.capacity))
            for n in eligible
            for device in self.nodes[n].devices
            if device.shareable
        ]
        return total, (max(shares) if shares and len(shares) == sum(counts) else MILLI)

    # -- allocating -------------------------------------------------------------------

    def plan(
        self, ask: DraAsk, node: str, gpus: Sequence[int], milli: int
    ) -> list[ClaimAllocation]:
        """The pod's claims allocated on `node`: GPU indices are handed to unallocated
        claims' requests in order (spec order of claims, then of requests)."""
        devices = self.nodes[node].devices
        remaining = list(gpus)
        planned = []
        for claim in ask.claims:
            if claim.allocated is not None:
                planned.append(ClaimAllocation(claim, claim.allocation_node, None))
                continue
            results = []
            for request in claim.requests:
                count = len(devices) if request.all_devices else request.count
                for _ in range(count):
                    device = devices[remaining.pop(0)]
                    results.append(self._result(request, device, milli < MILLI))
            planned.append(ClaimAllocation(claim, node, tuple(results), self._config(claim)))
        return planned

    def _config(self, claim: ResourceClaim) -> tuple[Mapping[str, Any], ...]:
        """As kube-scheduler writes it: each class's config once, naming the requests
        that used the class (`FromClass`), then the claim's own (`FromClaim`)."""
        by_class: dict[str, list[str]] = {}
        for request in claim.requests:
            by_class.setdefault(request.device_class, []).append(request.name)
        config: list[Mapping[str, Any]] = []
        for name, requests in by_class.items():
            device_class = self.classes.get(name)
            for entry in device_class.config if device_class else ():
                config.append(
                    {"source": "FromClass", "requests": requests, "opaque": entry["opaque"]}
                )
        for entry in claim.config:
            config.append(
                {
                    "source": "FromClaim",
                    "requests": list(entry.get("requests") or []),
                    "opaque": entry["opaque"],
                }
            )
        return tuple(config)

    def _result(self, request: DeviceRequest, device: Device, share: bool) -> AllocatedDevice:
        if not device.shareable:
            return AllocatedDevice(request.name, device.driver, device.pool, device.name)
        return AllocatedDevice(
            request.name,
            device.driver,
            device.pool,
            device.name,
            share_id=str(uuid.uuid4()),
            consumed=consumed(device, request.capacity if share else {}),
        )


class _ClaimError(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem
