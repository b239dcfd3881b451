"""Named heterogeneous clusters from the Sia and Gavel papers, scalable by node count.

| name | makeup | GPUs |
|---|---|---|
| `sia-64` | 6 × 4 T4, 3 × 8 RTX 2080Ti, 2 × 8 A100 (Sia's heterogeneous setting) | 64 |
| `sia-homog-64` | 16 × 4 T4 (Sia's homogeneous setting) | 64 |
| `sia-physical-44` | 3 × 8 RTX 2080Ti, 2 × 8 A100, 1 × 4 Quadro RTX 6000 (Sia's testbed) | 44 |
| `gavel-108` | 9 × 4 each of V100, P100, K80 (Gavel's 36:36:36) | 108 |

`scale k` multiplies every node count by k (Sia's `--cluster_scale`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies import NodeSpec


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """`count` identical nodes of `gpus` × `gpu_model`."""

    gpu_model: str
    count: int
    gpus: int
    cpu_milli: int = 48_000
    mem_mib: int = 196_608


CLUSTERS: Mapping[str, tuple[NodeGroup, ...]] = {
    "sia-64": (NodeGroup("t4", 6, 4), NodeGroup("rtx2080ti", 3, 8), NodeGroup("a100", 2, 8)),
    "sia-homog-64": (NodeGroup("t4", 16, 4),),
    "sia-physical-44": (
        NodeGroup("rtx2080ti", 3, 8),
        NodeGroup("a100", 2, 8),
        NodeGroup("rtx6000", 1, 4),
    ),
    "gavel-108": (NodeGroup("v100", 9, 4), NodeGroup("p100", 9, 4), NodeGroup("k80", 9, 4)),
}


def cluster_names() -> list[str]:
    return sorted(CLUSTERS)


def named_cluster(name: str, scale: int = 1) -> list[NodeSpec]:
    """Nodes of a named cluster with every node count multiplied by `scale`. Node names
    are `<model>-<index>`, zero-padded, so name order groups nodes by GPU model."""
    try:
        groups = CLUSTERS[name]
    except KeyError:
        known = ", ".join(cluster_names())
        raise ValueError(f"unknown cluster {name!r}; known clusters: {known}") from None
    if scale < 1:
        raise ValueError(f"cluster scale must be a positive integer, got {scale}")
    return build_nodes(groups, scale)


def build_nodes(groups: Sequence[NodeGroup], scale: int = 1) -> list[NodeSpec]:
    nodes = []
    for group in groups:
        count = group.count * scale
        width = len(str(max(count - 1, 0)))
        for i in range(count):
            nodes.append(
                NodeSpec(
                    name=f"{group.gpu_model}-{i:0{width}d}",
                    cpu_milli=group.cpu_milli,
                    mem_mib=group.mem_mib,
                    gpus=group.gpus,
                    gpu_model=group.gpu_model,
                )
            )
    return nodes
