"""The validating decoder for DRA objects: ResourceSlices, DeviceClasses and
ResourceClaims as the API serves them, in; small frozen records, out.

As with pods (`controller.kube.objects`), decoding never raises: a field that cannot be
read becomes a `Problem` naming it, and the record carries it. A slice with a problem
contributes no devices; a claim with a problem is reported on the pods that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from controller.kube.objects import Problem, parse_quantity, parse_time

DELETE_PROTECTION = "resource.kubernetes.io/delete-protection"
"""The finalizer kube-scheduler adds before it allocates a claim, so that
kube-controller-manager deallocates the claim before it goes."""
NODE_NAME_FIELD = "metadata.name"
MAX_SELECTOR_CHARS = 10 * 1024
"""The API's own limit on one CEL expression."""

T = TypeVar("T")


class Version(str):
    """A `version` attribute (CEL sees it as a semver)."""


AttributeValue = str | int | bool
Attributes = Mapping[str, Mapping[str, AttributeValue]]
"""Attributes by domain, then by name: `{"gpu.nvidia.com": {"productName": "..."}}`.
An unqualified name in a slice belongs to the driver's domain, as CEL sees it."""


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """How a consumable capacity may be requested (`capacity.<n>.requestPolicy`)."""

    default: Decimal | None = None
    valid_values: tuple[Decimal, ...] = ()
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    step: Decimal | None = None

    def round_up(self, amount: Decimal) -> Decimal | None:
        """The amount charged for a request of `amount` (None: no valid value fits)."""
        if self.valid_values:
            return next((v for v in self.valid_values if v >= amount), None)
        if self.minimum is None:
            return amount
        charged = max(amount, self.minimum)
        if self.step:
            steps = -((self.minimum - charged) // self.step)
            charged = self.minimum + steps * self.step
        if self.maximum is not None and charged > self.maximum:
            return None
        return charged


@dataclass(frozen=True, slots=True)
class Capacity:
    value: Decimal
    policy: RequestPolicy | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """One device of a slice, identified by driver/pool/name."""

    driver: str
    pool: str
    name: str
    attributes: Attributes
    capacity: Mapping[str, Mapping[str, Capacity]]
    """Capacities by domain, then by name, as `attributes`."""
    shareable: bool = False
    """`allowMultipleAllocations`: several claims may hold parts of it."""
    tainted: bool = False
    """Has a NoSchedule or NoExecute taint (gpufleet does not place on those)."""
    binds_later: bool = False
    """Has binding conditions or `bindsToNode` (gpufleet does not allocate those)."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.driver, self.pool, self.name)

    @property
    def is_gpu(self) -> bool:
        """A whole GPU: no `type` attribute, or `gpu` (not a MIG slice or a channel)."""
        kind = self.attribute("type")
        return kind is None or kind == "gpu"

    def attribute(self, name: str) -> AttributeValue | None:
        """An attribute by unqualified (driver domain) or `domain/name` qualified name."""
        domain, _, short = name.rpartition("/")
        return self.attributes.get(domain or self.driver, {}).get(short)

    def capacity_of(self, name: str) -> Capacity | None:
        domain, _, short = name.rpartition("/")
        return self.capacity.get(domain or self.driver, {}).get(short)


@dataclass(frozen=True, slots=True)
class ResourceSlice:
    name: str
    driver: str
    pool: str
    generation: int
    slice_count: int
    node_name: str
    """"" for slices that are not node-local (nodeSelector, allNodes): not GPUs of a node."""
    devices: tuple[Device, ...]
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceClass:
    name: str
    selectors: tuple[str, ...]
    extended_resource: str = ""
    config: tuple[Mapping[str, Any], ...] = ()
    """`spec.config[].opaque` entries, copied into allocations (`source: FromClass`)."""
    problems: tuple[Problem, ...] = ()

    def first_problem(self) -> Problem:
        problem = self.problems[0]
        return Problem(f"deviceclasses/{self.name}.{problem.field}", problem.message)


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One `spec.devices.requests[]` entry (only `exactly` requests are served)."""

    name: str
    device_class: str
    selectors: tuple[str, ...] = ()
    count: int = 1
    all_devices: bool = False
    capacity: Mapping[str, Decimal] = field(default_factory=dict)
    """Requested amounts of consumable capacities (by qualified or driver-domain name)."""
    admin_access: bool = False


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    request: str
    driver: str
    pool: str
    device: str
    share_id: str = ""
    consumed: Mapping[str, Decimal] = field(default_factory=dict)
    admin_access: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.driver, self.pool, self.device)


@dataclass(frozen=True, slots=True)
class Reservation:
    uid: str
    name: str
    resource: str = "pods"


@dataclass(frozen=True, slots=True)
class ResourceClaim:
    uid: str
    namespace: str
    name: str
    resource_version: str = field(compare=False)
    requests: tuple[DeviceRequest, ...]
    allocated: tuple[AllocatedDevice, ...] | None = None
    """None: not allocated."""
    allocation_node: str = ""
    """The node the allocation's node selector names ("" if none or not one node)."""
    reserved_for: tuple[Reservation, ...] = ()
    protected: bool = False
    """Carries the delete-protection finalizer."""
    deleting: bool = False
    owner_pod: str = ""
    """The uid of the pod that controls it (a claim made from a template), if any."""
    created: float = 0.0
    config: tuple[Mapping[str, Any], ...] = ()
    """`spec.devices.config[]` opaque entries, copied into its allocation (`FromClaim`)."""
    problems: tuple[Problem, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def first_problem(self) -> Problem:
        problem = self.problems[0]
        return Problem(f"resourceclaims/{self.name}.{problem.field}", problem.message)


class _Reader:
    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[Problem] = []

    def read(self, field_name: str, parse: Callable[[], T], default: T) -> T:
        try:
            return parse()
        except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as err:
            self.problems.append(Problem(f"{self.where}{field_name}", str(err) or repr(err)))
            return default


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def slice_from_json(obj: Mapping[str, Any]) -> ResourceSlice:
    meta, spec = _mapping(obj.get("metadata")), _mapping(obj.get("spec"))
    reader = _Reader("spec.")
    driver = str(spec.get("driver", ""))
    pool = _mapping(spec.get("pool"))
    pool_name = str(pool.get("name", ""))
    devices = tuple(
        reader.read(f"devices[{i}]", lambda d=device: _device(driver, pool_name, d), None)  # type: ignore[misc]
        for i, device in enumerate(_list(spec.get("devices")))
    )
    return ResourceSlice(
        name=str(meta.get("name", "")),
        driver=driver,
        pool=pool_name,
        generation=reader.read("pool.generation", lambda: int(pool.get("generation", 0)), 0),
        slice_count=reader.read(
            "pool.resourceSliceCount", lambda: int(pool.get("resourceSliceCount", 1)), 1
        ),
        node_name=str(spec.get("nodeName") or ""),
        devices=tuple(d for d in devices if d is not None),
        problems=tuple(reader.problems),
    )


def _device(driver: str, pool: str, obj: Mapping[str, Any]) -> Device:
    attributes: dict[str, dict[str, AttributeValue]] = {}
    for qualified, value in _mapping(obj.get("attributes")).items():
        domain, _, name = str(qualified).rpartition("/")
        attributes.setdefault(domain or driver, {})[name] = _attribute(qualified, value)
    capacity: dict[str, dict[str, Capacity]] = {}
    for qualified, value in _mapping(obj.get("capacity")).items():
        domain, _, name = str(qualified).rpartition("/")
        capacity.setdefault(domain or driver, {})[name] = _capacity(qualified, value)
    taints = _list(obj.get("taints"))
    return Device(
        driver=driver,
        pool=pool,
        name=str(obj["name"]),
        attributes=attributes,
        capacity=capacity,
        shareable=bool(obj.get("allowMultipleAllocations")),
        tainted=any(_mapping(t).get("effect") in ("NoSchedule", "NoExecute") for t in taints),
        binds_later=bool(obj.get("bindingConditions") or obj.get("bindsToNode")),
    )


def _attribute(name: str, value: object) -> AttributeValue:
    typed = _mapping(value)
    if "string" in typed:
        return str(typed["string"])
    if "version" in typed:
        return Version(typed["version"])
    if "bool" in typed:
        return bool(typed["bool"])
    if "int" in typed:
        return int(typed["int"])
    raise ValueError(f"attribute {name!r} has no string, version, int or bool value")


def _capacity(name: str, value: object) -> Capacity:
    typed = _mapping(value)
    if "value" not in typed:
        raise ValueError(f"capacity {name!r} has no value")
    policy = _mapping(typed.get("requestPolicy"))
    if not policy:
        return Capacity(parse_quantity(typed["value"]))
    valid = _mapping(policy.get("validRange"))

    def optional(text: object) -> Decimal | None:
        return None if text is None else parse_quantity(str(text))

    return Capacity(
        parse_quantity(typed["value"]),
        RequestPolicy(
            default=optional(policy.get("default")),
            valid_values=tuple(parse_quantity(v) for v in _list(policy.get("validValues"))),
            minimum=optional(valid.get("min")),
            maximum=optional(valid.get("max")),
            step=optional(valid.get("step")),
        ),
    )


def class_from_json(obj: Mapping[str, Any]) -> DeviceClass:
    meta, spec = _mapping(obj.get("metadata")), _mapping(obj.get("spec"))
    reader = _Reader("spec.")
    none: tuple[str, ...] = ()
    selectors = reader.read("selectors", lambda: _selectors(spec.get("selectors")), none)
    return DeviceClass(
        name=str(meta.get("name", "")),
        selectors=selectors,
        extended_resource=str(spec.get("extendedResourceName") or ""),
        config=_opaque(spec.get("config")),
        problems=tuple(reader.problems),
    )


def _opaque(value: object) -> tuple[Mapping[str, Any], ...]:
    """Config entries that carry opaque driver parameters (the only kind there is)."""
    return tuple(_mapping(c) for c in _list(value) if _mapping(_mapping(c).get("opaque")))


def _selectors(value: object) -> tuple[str, ...]:
    expressions = []
    for i, selector in enumerate(_list(value)):
        cel = _mapping(_mapping(selector).get("cel"))
        if "expression" not in cel:
            raise ValueError(f"selector {i} has no cel.expression (the only kind there is)")
        expression = str(cel["expression"])
        if len(expression) > MAX_SELECTOR_CHARS:
            raise ValueError(f"selector {i} is over {MAX_SELECTOR_CHARS} characters")
        expressions.append(expression)
    return tuple(expressions)


def claim_from_json(obj: Mapping[str, Any]) -> ResourceClaim:
    meta, spec = _mapping(obj.get("metadata")), _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
    reader = _Reader("")
    requests: list[DeviceRequest | None] = [
        reader.read(f"spec.devices.requests[{i}]", partial(_request, r), None)
        for i, r in enumerate(_list(_mapping(spec.get("devices")).get("requests")))
    ]
    allocation = _mapping(status.get("allocation"))
    nothing: tuple[AllocatedDevice, ...] = ()
    allocated = (
        reader.read("status.allocation.devices", lambda: _allocated(allocation), nothing)
        if allocation
        else None
    )
    owners = [o for o in _list(meta.get("ownerReferences")) if _mapping(o).get("controller")]
    pod_owner = next((str(o.get("uid", "")) for o in owners if o.get("kind") == "Pod"), "")
    return ResourceClaim(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "default")),
        name=str(meta.get("name", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        requests=tuple(r for r in requests if r is not None),
        allocated=allocated,
        allocation_node=_selected_node(_mapping(allocation.get("nodeSelector"))),
        reserved_for=tuple(
            Reservation(str(r.get("uid", "")), str(r.get("name", "")), str(r.get("resource", "")))
            for r in map(_mapping, _list(status.get("reservedFor")))
        ),
        protected=DELETE_PROTECTION in _list(meta.get("finalizers")),
        deleting=bool(meta.get("deletionTimestamp")),
        owner_pod=pod_owner,
        created=reader.read(
            "metadata.creationTimestamp", lambda: parse_time(meta.get("creationTimestamp")), 0.0
        ),
        config=_opaque(_mapping(spec.get("devices")).get("config")),
        problems=tuple(reader.problems),
    )


def _request(obj: Mapping[str, Any]) -> DeviceRequest:
    name = str(obj.get("name", ""))
    if "firstAvailable" in obj:
        raise ValueError(f"request {name!r}: firstAvailable (prioritized lists) is not served")
    exactly = _mapping(obj.get("exactly"))
    if not exactly:
        raise ValueError(f"request {name!r} has no `exactly` part")
    mode = str(exactly.get("allocationMode") or "ExactCount")
    if mode not in ("ExactCount", "All"):
        raise ValueError(f"request {name!r}: allocationMode {mode!r} is neither ExactCount nor All")
    count = int(exactly.get("count", 1))
    if count < 1:
        raise ValueError(f"request {name!r}: count {count} is below 1")
    wanted = _mapping(_mapping(exactly.get("capacity")).get("requests"))
    return DeviceRequest(
        name=name,
        device_class=str(exactly.get("deviceClassName", "")),
        selectors=_selectors(exactly.get("selectors")),
        count=count,
        all_devices=mode == "All",
        capacity={str(k): parse_quantity(str(v)) for k, v in wanted.items()},
        admin_access=bool(exactly.get("adminAccess")),
    )


def _allocated(allocation: Mapping[str, Any]) -> tuple[AllocatedDevice, ...]:
    results = _list(_mapping(allocation.get("devices")).get("results"))
    return tuple(
        AllocatedDevice(
            request=str(r.get("request", "")),
            driver=str(r["driver"]),
            pool=str(r["pool"]),
            device=str(r["device"]),
            share_id=str(r.get("shareID") or ""),
            consumed={
                str(k): parse_quantity(str(v))
                for k, v in _mapping(r.get("consumedCapacity")).items()
            },
            admin_access=bool(r.get("adminAccess")),
        )
        for r in map(_mapping, results)
    )


def _selected_node(selector: Mapping[str, Any]) -> str:
    terms = _list(selector.get("nodeSelectorTerms"))
    if len(terms) != 1:
        return ""
    for match in _list(_mapping(terms[0]).get("matchFields")):
        match = _mapping(match)
        values = _list(match.get("values"))
        if (
            match.get("key") == NODE_NAME_FIELD
            and match.get("operator") == "In"
            and len(values) == 1
        ):
            return str(values[0])
    return ""


def node_selector_for(node: str) -> dict[str, Any]:
    """The allocation's node selector for devices local to `node`, as kube-scheduler
    writes it."""
    term = {"matchFields": [{"key": NODE_NAME_FIELD, "operator": "In", "values": [node]}]}
    return {"nodeSelectorTerms": [term]}
