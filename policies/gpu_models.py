"""GPU model names: what a node reports, what policies index by, what a job may ask for.

A node reports a *product*: GPU Feature Discovery's `nvidia.com/gpu.product`
(`NVIDIA-A100-SXM4-40GB`, `Tesla-V100-SXM2-16GB`), a DRA device's product name
(`NVIDIA A100-SXM4-40GB`), or a trace's model column (`A100`, `V100M32`). Policies keep
per-model arrays (`ClusterState.gpu_models`) and throughput tables keyed by *family*
(`A100`, `v100`), so each node's model is derived once, by `node_model`:

| product | node model |
|---|---|
| `NVIDIA-A100-SXM4-40GB`, `NVIDIA-A100-80GB-PCIe`, `A100-SXM4-40GB` | `A100` |
| `Tesla-V100-SXM2-16GB` | `V100` |
| `Tesla-T4` | `T4` |
| `NVIDIA-H100-80GB-HBM3`, `NVIDIA H100 PCIe` | `H100` |
| `NVIDIA-A10G` | `A10G` (not `A10`: families are whole words) |
| `a100`, `V100` (bare family names) | unchanged (spelling kept) |
| `NVIDIA-A100-SXM4-40GB-MIG-1g.5gb` (a MIG slice) | unchanged: a slice is not the GPU |
| `NVIDIA-GeForce-RTX-4090`, `V100M32`, `unknown` (no known family) | unchanged |

A DRA device reports its product through an attribute (`dra_product`: NVIDIA's driver
publishes `productName`), read by the same table.

A name is split into words at `-`, `_` and spaces and compared case-insensitively; the
leading vendor words `NVIDIA` and `Tesla` are dropped. If the next word is a known family
(`FAMILIES`) the name is that family plus *qualifiers* (the other words: `SXM4`, `40GB`).
The node model is the family as the product spells it, the product otherwise; the node
keeps the full product (`NodeSpec.gpu_product`) for variant requests.

A job's request (`JobSpec.allowed_models`: a CTJ's `gpuTypes`, the pod annotation
`gpufleet.io/gpu-models`, a trace's `allowed_models`) is a set of names; a node's GPU
matches a name (`matches`) when

- the two are the same name, ignoring case (every product matches its own name), or
- both are of the same known family and every qualifier of the request is one of the
  product's: `A100` matches any A100 product, `A100-80GB` only 80 GB ones,
  `A100-SXM4-40GB` and `NVIDIA-A100-SXM4-40GB` the same ones.

A variant request does not match a node known only by its family (a trace's `A100`):
its memory is unknown. Per-model policies (Sia, Gavel, the accuracy-aware allocators)
ask `family_admits` whether a job may use some GPUs of a model; node filters and the
placement contract then check each node's product (`admits`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FAMILIES = frozenset(
    {
        "k80", "m60", "p4", "p40", "p100", "v100", "t4",
        "a2", "a10", "a10g", "a16", "a30", "a40", "a100", "a800",
        "h20", "h100", "h200", "h800", "gh200", "l4", "l20", "l40", "l40s",
        "b100", "b200", "gb200",
    }
)  # fmt: skip
"""NVIDIA data-centre GPU families, lower case."""

VENDOR_WORDS = ("nvidia", "tesla")
"""Leading words of a product that name no family."""

_SEPARATORS = re.compile(r"[-_\s]+")


@dataclass(frozen=True, slots=True)
class GpuName:
    """A name read as a known `family` (lower case, "" if none), the family as the name
    spells it, and the name's other words (`qualifiers`, lower case)."""

    family: str
    spelling: str
    qualifiers: frozenset[str]


@functools.lru_cache(maxsize=4096)
def parse(name: str) -> GpuName:
    words = [w for w in _SEPARATORS.split(name.strip()) if w]
    while words and words[0].casefold() in VENDOR_WORDS:
        words.pop(0)
    lowered = [w.casefold() for w in words]
    # A MIG slice (GFD's single strategy appends `-MIG-<profile>`) is not its GPU.
    if not words or lowered[0] not in FAMILIES or "mig" in lowered:
        return GpuName("", "", frozenset())
    return GpuName(lowered[0], words[0], frozenset(lowered[1:]))


def node_model(product: str) -> str:
    """The model name policies use for a node reporting `product` (see the table)."""
    return parse(product).spelling or product


def matches(request: str, product: str) -> bool:
    """Whether a GPU reporting `product` is one that `request` asks for."""
    if request.casefold() == product.casefold():
        return True
    want, have = parse(request), parse(product)
    return bool(want.family) and want.family == have.family and want.qualifiers <= have.qualifiers


def admits(allowed: frozenset[str] | None, product: str) -> bool:
    """Whether a job allowing `allowed` (None: any) may run on a GPU reporting `product`."""
    return allowed is None or product in allowed or any(matches(r, product) for r in allowed)


def names_variant(allowed: frozenset[str]) -> bool:
    """Whether some name in `allowed` is a variant (`A100-80GB`), which a node's model
    alone cannot decide."""
    return any(parse(r).qualifiers for r in allowed)


def family_admits(allowed: frozenset[str] | None, model: str) -> bool:
    """Whether a job allowing `allowed` may run on some GPUs policies call `model`: a bare
    family stands for all its products, so `A100-80GB` may use model `A100`."""
    if allowed is None or admits(allowed, model):
        return True
    have = parse(model)
    bare = bool(have.family) and not have.qualifiers
    return bare and any(parse(r).family == have.family for r in allowed)


DRA_PRODUCT_ATTRIBUTES = ("productName", "product", "model")
"""Device attributes (driver domain) that name a DRA device's product, in the order they
are tried: NVIDIA's DRA driver publishes `productName` (`NVIDIA A100-SXM4-80GB`, the
NVML name, read by `node_model` like GFD's dashed label); other drivers' names follow."""


def dra_product(
    attributes: Mapping[str, object], names: Sequence[str] = DRA_PRODUCT_ATTRIBUTES
) -> str:
    """The product a DRA device reports through its attributes (`names` tried in order;
    "" if none is a non-empty string). Deployments whose driver spells it otherwise
    pass their own `names` (`controller serve --dra-product-attribute`)."""
    for name in names:
        value = attributes.get(name)
        if isinstance(value, str) and value:
            return value
    return ""
