"""How many tasks of each shape a host's waiting and running jobs hold: the counts a
live target workload (FGD, `policies.fragmentation`) is built from.

Counting the snapshot's jobs costs O(jobs) a pass, which dominates a long replay (tens
of thousands of running jobs, one pass per arrival). A host that sees every arrival and
departure keeps a `TaskMix` up to date instead and hands its counts to policies on the
snapshot (`Snapshot.task_mix`); a host that does not (the controller, whose snapshots are
built independently) leaves it None and policies count the jobs themselves. Both give
the same counts (tests/test_task_mix.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from policies.jobs import JobSpec, TaskRequest

TaskKey = tuple[int, int, int, frozenset[str] | None]
"""(CPU milli, per-GPU milli (0 for a CPU-only task), GPU count, GPU models or None)."""


def task_key(task: TaskRequest, models: frozenset[str] | None) -> TaskKey:
    milli = task.gpu_milli if task.num_gpus else 0
    return (task.cpu_milli, milli, task.num_gpus, models or None)


def count_tasks(jobs: Iterable[JobSpec]) -> Counter[TaskKey]:
    """Tasks per shape in `jobs`; a job counts once per replica (one pod each)."""
    counts: Counter[TaskKey] = Counter()
    for job in jobs:
        counts[task_key(job.task, job.allowed_models)] += job.replicas
    return counts


class TaskMix:
    """A host's running count of tasks per shape, changed as jobs join and leave the
    set of waiting and running jobs (moving between the two changes nothing)."""

    __slots__ = ("_counts", "_view")

    def __init__(self) -> None:
        self._counts: dict[TaskKey, int] = {}
        self._view: Mapping[TaskKey, int] = MappingProxyType(self._counts)

    def add(self, job: JobSpec) -> None:
        key = task_key(job.task, job.allowed_models)
        self._counts[key] = self._counts.get(key, 0) + job.replicas

    def remove(self, job: JobSpec) -> None:
        key = task_key(job.task, job.allowed_models)
        left = self._counts.get(key, 0) - job.replicas
        if left < 0:
            raise ValueError(f"job {job.id}: removed from the task mix more often than added")
        if left:
            self._counts[key] = left
        else:
            del self._counts[key]  # a shape no job holds is no type of the workload

    def counts(self) -> Mapping[TaskKey, int]:
        """A read-only view of the live counts (it follows later changes; policies read it
        only during the pass it was handed to them in)."""
        return self._view
