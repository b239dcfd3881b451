"""What a policy returns. Hosts apply these; policies never mutate shared state.

Each decision carries a short human-readable reason that both hosts log and record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.jobs import Placement


@dataclass(frozen=True, slots=True)
class Place:
    """Start a pending job on `placement`."""

    job_id: str
    placement: Placement
    reason: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop a running job and return it to the queue (it pays its restart cost later)."""

    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resize:
    """Move a running job to a new placement (other size or GPU model). The host releases
    the old placement, takes the new one and charges the job's restart cost."""

    job_id: str
    placement: Placement
    reason: str


@dataclass(frozen=True, slots=True)
class Unschedulable:
    """The policy tried the job and could not place it now; `plugin` names the step that
    rejected it (as kube-scheduler's Status does)."""

    job_id: str
    reason: str
    plugin: str = ""


Decision = Place | Preempt | Resize | Unschedulable


@dataclass(frozen=True, slots=True)
class SchedulingResult:
    """One pass's decisions, in the order the host must apply them (preemptions and
    resizes before the placements that need their GPUs), plus when the policy wants to
    run again even if nothing happens (e.g. a LAS queue demotion), or None."""

    decisions: tuple[Decision, ...] = ()
    wake_at: float | None = None
    notes: dict[str, float] = field(default_factory=dict)

    def of_type(self, kind: type) -> list[Decision]:
        return [d for d in self.decisions if isinstance(d, kind)]
