"""The target workload M of FGD's measure (docs/fgd.md §1): the task types a cluster
expects to arrive and their shares. M is the most popular task shapes (CPU, per-GPU
milli, GPU count, GPU models) that cover `coverage` of all tasks, CPU-only tasks
included, their shares renormalised, as the artifact's typical pods are; it is taken
from counts, from a job list (a trace replay) or from the jobs a snapshot shows (a live
controller). The types below the cut travel with it (`TargetWorkload.cut`), with their
shares of all tasks, for FGD's tie rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policies.jobs import JobSpec, JobView, TaskRequest
from policies.task_mix import TaskKey, count_tasks, task_key

DEFAULT_COVERAGE = 0.95
"""Task types are added, most popular first, until they cover this share of tasks."""


@dataclass(frozen=True, slots=True)
class TaskType:
    """One entry of a target workload: a task shape, the GPU models it accepts (None for
    any) and its probability. Memory is not part of the measure, so `task.mem_mib` is 0."""

    task: TaskRequest
    allowed_models: frozenset[str] | None
    probability: float


@dataclass(frozen=True)
class TargetWorkload:
    """The task mix FGD expects to arrive; probabilities sum to 1. `cut` holds the
    types the coverage cut left out, each with its share of all tasks (not
    renormalised): the measure leaves them out, FGD's tie-break weighs their fragments
    (`policies.cut_fragments`). A workload given whole has none."""

    types: tuple[TaskType, ...]
    cut: tuple[TaskType, ...] = ()

    def __post_init__(self) -> None:
        if not self.types:
            raise ValueError("a target workload needs at least one task type")
        probs = [t.probability for t in self.types]
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError("task type probabilities must be >= 0 and sum to 1")
        cut = [t.probability for t in self.cut]
        if cut and (min(cut) < 0 or sum(cut) > 1.0 + 1e-6):
            raise ValueError("cut task type shares must be >= 0 and sum to at most 1")


def build_target_workload(
    tasks: Iterable[tuple[TaskRequest, frozenset[str] | None]],
    coverage: float = DEFAULT_COVERAGE,
) -> TargetWorkload:
    """Group tasks by (CPU, per-GPU milli, GPU count, GPU models) and take the workload
    of those counts (`workload_from_counts`)."""
    counts: Counter[TaskKey] = Counter(task_key(task, models) for task, models in tasks)
    return workload_from_counts(counts, coverage)


def workload_from_counts(
    counts: Mapping[TaskKey, int], coverage: float = DEFAULT_COVERAGE
) -> TargetWorkload:
    """Take the most popular task shapes until they cover `coverage` of all tasks
    (CPU-only tasks included) and renormalise their shares to probabilities."""
    if not 0 < coverage <= 1:
        raise ValueError("coverage must be in (0, 1]")
    if not any(counts.values()):
        raise ValueError("cannot build a target workload from no tasks")
    total = float(sum(counts.values()))
    # Most popular first; equal counts in the artifact's order (larger CPU, then larger
    # milli-GPU, GPU count and model string first), so the cut-off is deterministic.
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], _order_key(kv[0])), reverse=True)
    threshold = coverage * 100 * total / 100.0
    chosen: list[tuple[TaskKey, int]] = []
    covered = 0.0
    for key, count in ranked:
        if covered >= threshold:
            break
        chosen.append((key, count))
        covered += count
    types = tuple(_task_type(key, (count / total) / (covered / total)) for key, count in chosen)
    cut = tuple(_task_type(key, count / total) for key, count in ranked[len(chosen) :] if count)
    return TargetWorkload(types, cut)


def _task_type(key: TaskKey, probability: float) -> TaskType:
    cpu, milli, num, models = key
    task = TaskRequest(cpu_milli=cpu, num_gpus=num, gpu_milli=milli)
    return TaskType(task, models, probability)


def workload_from_jobs(
    jobs: Iterable[JobSpec], coverage: float = DEFAULT_COVERAGE
) -> TargetWorkload:
    """The target workload of a job list; a job counts once per replica (one pod each)."""
    return workload_from_counts(count_tasks(jobs), coverage)


def live_workload(views: Iterable[JobView], coverage: float = DEFAULT_COVERAGE) -> TargetWorkload:
    """The target workload implied by the jobs a snapshot shows (pending and running):
    all a live controller knows of the arrival distribution."""
    return workload_from_jobs((view.spec for view in views), coverage)


def _order_key(key: TaskKey) -> tuple[int, int, int, str]:
    cpu, milli, num, models = key
    return (cpu, milli, num, "|".join(sorted(models or ())))


def type_key(task_type: TaskType) -> tuple[TaskRequest, frozenset[str] | None]:
    """What makes a task type the same type whatever its probability."""
    return (task_type.task, task_type.allowed_models)
