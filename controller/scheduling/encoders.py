"""Device-backend encoders: how a pod asks for GPUs, how many GPUs a node has, and which
annotations tell the node's device plugin what the scheduler picked.

The decision itself is backend-neutral (node, GPU indices, milli-GPU per GPU) and is
always written as gpufleet's own Binding annotations; an encoder adds its backend's
spelling of the same decision. In KWOK tests nothing consumes the encoder's output, so
the tests assert the annotations themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import ClassVar, Protocol

from controller.kube.objects import (
    GPU_COUNT_LABEL,
    GPU_MEMORY_LABEL,
    GPU_MILLI,
    GPU_RESOURCE,
    GPU_UUIDS_ANNOTATION,
    NodeRecord,
    PodRecord,
    Problem,
)
from policies import MILLI


class GpuEncoder(Protocol):
    name: ClassVar[str]
    shares_gpus: ClassVar[bool]
    """Whether its device plugin lets pods share a GPU; the nodes policies see say so
    (`NodeSpec.shares_gpus`), so they plan whole GPUs where it does not."""

    def request(self, pod: PodRecord) -> tuple[int, int]:
        """(GPUs, milli-GPU per GPU) the pod asks for."""
        ...

    def node_gpus(self, node: NodeRecord) -> int: ...

    def caveat(self, pod: PodRecord) -> str:
        """What of the pod's request this backend cannot honour ("" if nothing)."""
        ...

    def annotations(
        self, pod: PodRecord, node: NodeRecord, gpus: tuple[int, ...], milli: int, now: float
    ) -> dict[str, str]:
        """Backend annotations for the Binding, on top of gpufleet's own."""
        ...


def gpu_uuids(node: NodeRecord, count: int) -> list[str]:
    """The node's GPU UUIDs by index (from our node annotation, else stable stand-ins)."""
    listed = [u for u in node.annotations.get(GPU_UUIDS_ANNOTATION, "").split(",") if u]
    return listed if len(listed) >= count else [f"GPU-{node.name}-{i}" for i in range(count)]


def _share_milli(pod: PodRecord, num_gpus: int) -> int:
    """Our share annotation applies to one-GPU pods; anything else takes whole GPUs."""
    if num_gpus != 1 or pod.meta.share_milli is None:
        return MILLI if num_gpus else 0
    return pod.meta.share_milli


def share_problem(pod: PodRecord, encoder: GpuEncoder) -> Problem | None:
    """A share annotation (`gpufleet.io/gpu-milli` below 1000) on a pod that does not ask
    for exactly one GPU from the device plugin. Its author meant a share of a GPU; taken
    as asked, the pod would run on no GPU (or on whole GPUs, or on what its claims ask),
    so it is reported instead of scheduled."""
    share = pod.meta.share_milli
    if share is None or share >= MILLI:
        return None
    field = f"metadata.annotations[{GPU_MILLI}]"
    if pod.claims:
        return Problem(field, "a pod with spec.resourceClaims asks its share in the claim")
    gpus = encoder.request(pod)[0]
    if gpus == 1:
        return None
    return Problem(
        field,
        f"{share} is a share of one GPU: the pod must ask for exactly 1 GPU "
        f"(--backend {encoder.name}), not {gpus}",
    )


def _count(value: Decimal | None) -> int:
    return int(value) if value is not None else 0


class WholeGpu:
    """`nvidia.com/gpu: N`. The device plugin, not the scheduler, picks the devices, so
    the GPU indices live only in gpufleet's annotations. It hands every pod whole
    devices, so a share (`gpufleet.io/gpu-milli`) cannot be honoured here: such a pod is
    scheduled as the whole GPU it will get (share GPUs with `hami` or `gpushare`), and
    the nodes tell policies their GPUs cannot be shared: the share allocators give a
    CTJ window whole GPUs here, since a second pod on a GPU would be refused by the
    kubelet (each pod takes one `nvidia.com/gpu`)."""

    name: ClassVar[str] = "whole"
    shares_gpus: ClassVar[bool] = False

    def request(self, pod: PodRecord) -> tuple[int, int]:
        gpus = _count(pod.resources.get(GPU_RESOURCE))
        return gpus, MILLI if gpus else 0

    def caveat(self, pod: PodRecord) -> str:
        share = pod.meta.share_milli
        if share is None or share == MILLI or _count(pod.resources.get(GPU_RESOURCE)) != 1:
            return ""
        return (
            f"{GPU_MILLI}={share} not honoured under --backend whole: the device plugin "
            "hands out whole GPUs (share GPUs with --backend hami or gpushare)"
        )

    def node_gpus(self, node: NodeRecord) -> int:
        return _count(node.resources.get(GPU_RESOURCE))

    def annotations(
        self, pod: PodRecord, node: NodeRecord, gpus: tuple[int, ...], milli: int, now: float
    ) -> dict[str, str]:
        return {}


class Hami:
    """HAMi vGPU: `nvidia.com/gpu` counts vGPUs, `nvidia.com/gpucores` is the per-GPU
    core percentage; the scheduler names the devices in `hami.io/vgpu-devices-to-allocate`
    (`UUID,Type,memMiB,cores:` per device, `;` after each container)."""

    name: ClassVar[str] = "hami"
    shares_gpus: ClassVar[bool] = True
    CORES = "nvidia.com/gpucores"

    def request(self, pod: PodRecord) -> tuple[int, int]:
        gpus = _count(pod.resources.get(GPU_RESOURCE))
        cores = pod.resources.get(self.CORES)
        if gpus == 1 and cores is not None and 0 < cores < 100:
            return 1, int(cores) * 10
        return gpus, _share_milli(pod, gpus)

    def caveat(self, pod: PodRecord) -> str:
        return ""

    def node_gpus(self, node: NodeRecord) -> int:
        # HAMi advertises vGPU slots as nvidia.com/gpu; the physical count is GFD's label.
        if GPU_COUNT_LABEL in node.labels:
            return int(node.labels[GPU_COUNT_LABEL])
        return _count(node.resources.get(GPU_RESOURCE))

    def annotations(
        self, pod: PodRecord, node: NodeRecord, gpus: tuple[int, ...], milli: int, now: float
    ) -> dict[str, str]:
        uuids = gpu_uuids(node, self.node_gpus(node))
        memory = int(node.labels.get(GPU_MEMORY_LABEL, "0"))
        devices = "".join(
            f"{uuids[g]},NVIDIA,{memory * milli // MILLI},{milli // 10}:" for g in gpus
        )
        return {
            "hami.io/vgpu-node": node.name,
            "hami.io/vgpu-time": str(int(now)),
            "hami.io/bind-phase": "allocating",
            "hami.io/vgpu-devices-to-allocate": devices + ";",
        }


class GpuShare:
    """Alibaba gpushare: memory-slice accounting on one GPU per pod, with the device
    index in `ALIYUN_COM_GPU_MEM_IDX` for its device plugin."""

    name: ClassVar[str] = "gpushare"
    shares_gpus: ClassVar[bool] = True
    MEM = "aliyun.com/gpu-mem"
    COUNT = "aliyun.com/gpu-count"

    def request(self, pod: PodRecord) -> tuple[int, int]:
        gpus = _count(pod.resources.get(self.COUNT)) or (1 if self.MEM in pod.resources else 0)
        return gpus, _share_milli(pod, gpus)

    def caveat(self, pod: PodRecord) -> str:
        return ""

    def node_gpus(self, node: NodeRecord) -> int:
        return _count(node.resources.get(self.COUNT))

    def annotations(
        self, pod: PodRecord, node: NodeRecord, gpus: tuple[int, ...], milli: int, now: float
    ) -> dict[str, str]:
        count = max(1, self.node_gpus(node))
        device_gib = _count(node.resources.get(self.MEM)) // count
        requested = _count(pod.resources.get(self.MEM)) or device_gib * milli // MILLI
        return {
            "ALIYUN_COM_GPU_MEM_IDX": ",".join(str(g) for g in gpus),
            "ALIYUN_COM_GPU_MEM_POD": str(requested),
            "ALIYUN_COM_GPU_MEM_DEV": str(device_gib),
            "ALIYUN_COM_GPU_MEM_ASSIGNED": "false",
            "ALIYUN_COM_GPU_MEM_ASSUME_TIME": str(int(now * 1e9)),
        }


ENCODERS: Mapping[str, type[GpuEncoder]] = {cls.name: cls for cls in (WholeGpu, Hami, GpuShare)}


def make_encoder(name: str) -> GpuEncoder:
    try:
        return ENCODERS[name]()
    except KeyError:
        known = ", ".join(sorted(ENCODERS))
        raise ValueError(f"unknown device backend {name!r}; known: {known}") from None
