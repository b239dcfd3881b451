"""RAP's stage packing (ASPLOS'24): which fused preprocessing kernels co-run in which
training stage of one GPU, by the artifact's greedy scheduler, and how much work
overruns the last stage (the only part that slows training). Pure geometry over
`policies.dlrm.GpuStages`; `policies.rap_model` turns it into iteration time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from policies.dlrm import STAGES, GpuStages, PreprocessingWork


@dataclass(frozen=True, slots=True)
class Kernel:
    """A (fused) preprocessing kernel: its standalone latency and how many ops it fuses."""

    latency_ms: float
    ops: int = 1

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.ops < 1:
            raise ValueError("a kernel needs latency >= 0 and at least one op")

    def shard(self, ops: int) -> tuple[Kernel, Kernel]:
        """The first `ops` ops and the rest, latency shared per op (linear)."""
        per_op = self.latency_ms / self.ops
        return Kernel(per_op * ops, ops), Kernel(per_op * (self.ops - ops), self.ops - ops)


@dataclass(frozen=True, slots=True)
class CoRunPlan:
    """Which kernels co-run in which stage (STAGES order) and the time by which the
    last stage overruns its capacity (the only part that slows training)."""

    stages: tuple[tuple[Kernel, ...], ...]
    chosen: tuple[int, ...]
    """Stage indices picked by intensity, in the order they were picked."""
    overflow_ms: float

    def load_ms(self, stage: int) -> float:
        return sum(k.latency_ms for k in self.stages[stage])


def stages_to_fill(gpu: GpuStages, work_ms: float) -> tuple[int, ...]:
    """Stages by descending intensity κ (execution order on ties) until their capacity
    covers `work_ms`; at least one stage, all of them if even that is short."""
    intensity = gpu.intensity()
    order = sorted(range(len(STAGES)), key=lambda k: -intensity[k])
    chosen: list[int] = []
    covered = 0.0
    for stage in order:
        chosen.append(stage)
        covered += gpu.capacity_ms[stage]
        if covered >= work_ms:
            break
    return tuple(chosen)


def pack_stages(kernels: Sequence[Kernel], gpu: GpuStages) -> CoRunPlan:
    """The artifact's greedy co-run schedule for one GPU.

    Walk the chosen stages in execution order and fill each with whole kernels while
    they fit; a kernel that does not fit is split at op granularity (the largest head
    that fits goes in, the rest waits for the next stage) and the walk moves on.
    Whatever is left goes to the last stage.
    """
    total = sum(k.latency_ms for k in kernels)
    chosen = stages_to_fill(gpu, total)
    queue = deque(kernels)
    placed: list[list[Kernel]] = [[] for _ in STAGES]
    for stage in sorted(chosen):
        _fill_stage(queue, placed[stage], gpu.capacity_ms[stage])
    last = len(STAGES) - 1
    placed[last].extend(queue)
    overflow = max(0.0, sum(k.latency_ms for k in placed[last]) - gpu.capacity_ms[last])
    return CoRunPlan(tuple(tuple(p) for p in placed), chosen, overflow)


def _fill_stage(queue: deque[Kernel], placed: list[Kernel], capacity_ms: float) -> None:
    room = capacity_ms
    while queue:
        kernel = queue[0]
        if kernel.latency_ms <= room:
            placed.append(queue.popleft())
            room -= kernel.latency_ms
            continue
        head_ops = _ops_that_fit(kernel, room)
        if head_ops:
            head, rest = kernel.shard(head_ops)
            placed.append(head)
            queue[0] = rest
        return


def _ops_that_fit(kernel: Kernel, room_ms: float) -> int:
    if kernel.ops < 2 or kernel.latency_ms <= 0:
        return 0
    fits = math.floor(room_ms * kernel.ops / kernel.latency_ms + 1e-9)
    return max(0, min(kernel.ops - 1, fits))


def fused_kernels(work: PreprocessingWork) -> tuple[Kernel, ...]:
    """The GPU's fused kernels. The data gives only their count and summed latency, so
    each gets an equal share of the latency and of the ops (remainder to the first)."""
    count = work.fused_kernels
    base, extra = divmod(work.num_ops, count)
    return tuple(
        Kernel(work.fused_ms / count, base + (1 if i < extra else 0)) for i in range(count)
    )
