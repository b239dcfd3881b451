"""Interference between jobs that share a GPU through an auxiliary part.

When a job places an auxiliary part (`TaskPlacement.part`, e.g. a DLRM job's
preprocessing) on a GPU where other jobs run tasks, those *host* jobs slow down by the
fraction the part's work model states (`policies.SlowsHosts`). A synchronous job runs at
the pace of its slowest GPU, so its speed factor is the smallest, over its GPUs, of the
product of (1 − slowdown) of the foreign parts there.

The tracker records which jobs changed standing (`take_disturbed`) so the engine re-times
only those.
"""

from __future__ import annotations

from collections import defaultdict

from policies import JobSpec, PartShape, Placement, SlowsHosts

Gpu = tuple[str, int]
"""(node name, GPU index)."""


class Colocation:
    """Replica tasks and auxiliary parts per GPU, and the slowdown they impose."""

    def __init__(self) -> None:
        self._tenants: defaultdict[Gpu, set[str]] = defaultdict(set)
        self._parts: defaultdict[Gpu, dict[str, float]] = defaultdict(dict)
        self._disturbed: set[str] = set()

    def add(self, spec: JobSpec, placement: Placement) -> None:
        for task in placement.replica_tasks:
            for gpu in task.gpus:
                self._tenants[(task.node, gpu)].add(spec.id)
        for task in placement.part_tasks:
            cpu = task.request.cpu_milli if task.request is not None else 0
            slowdown = _slowdown(spec, PartShape(task.part, cpu, task.gpu_milli))
            for gpu in task.gpus:
                self._parts[(task.node, gpu)][spec.id] = slowdown
                self._disturb((task.node, gpu), spec.id)

    def remove(self, spec: JobSpec, placement: Placement) -> None:
        for task in placement.replica_tasks:
            for gpu in task.gpus:
                self._tenants[(task.node, gpu)].discard(spec.id)
        for task in placement.part_tasks:
            for gpu in task.gpus:
                if self._parts[(task.node, gpu)].pop(spec.id, None) is not None:
                    self._disturb((task.node, gpu), spec.id)

    def speed_factor(self, job_id: str, placement: Placement) -> float:
        """Share of its own speed `job_id` keeps on `placement` (1.0 when undisturbed)."""
        factor = 1.0
        for task in placement.replica_tasks:
            for gpu in task.gpus:
                parts = self._parts.get((task.node, gpu))
                if not parts:
                    continue
                keep = 1.0
                for owner, slowdown in parts.items():
                    if owner != job_id:
                        keep *= 1.0 - slowdown
                factor = min(factor, keep)
        return factor

    def take_disturbed(self) -> set[str]:
        """Jobs whose GPUs gained or lost a foreign part since the last call."""
        disturbed, self._disturbed = self._disturbed, set()
        return disturbed

    def _disturb(self, gpu: Gpu, owner: str) -> None:
        self._disturbed.update(j for j in self._tenants.get(gpu, ()) if j != owner)


def _slowdown(spec: JobSpec, part: PartShape) -> float:
    work = spec.work
    return work.host_slowdown(part) if isinstance(work, SlowsHosts) else 0.0
