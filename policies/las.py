"""Preemptive least-attained-service, in the style of Tiresias' discretised 2D-LAS.

Jobs sit in priority queues by attained service (GPU-seconds): queue k holds jobs whose
service lies between thresholds k−1 and k. Higher queues run first and FIFO (submit time)
orders jobs within a queue. Each pass admits jobs in that order while their GPUs fit the
cluster's total, preempts running jobs that fell out of the admitted set, and places the
newly admitted ones with a placement policy. A job that may not be preempted stays
admitted, its GPUs taken. Running jobs only change queue when they
cross a threshold, so the policy asks to be woken at the next crossing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from policies.base import Context, PlacementPolicy, Policy, PolicyConfig, Snapshot
from policies.cluster import MILLI, ClusterState
from policies.decisions import Decision, Place, Preempt, SchedulingResult, Unschedulable
from policies.jobs import JobView
from policies.placement import release
from policies.registry import make_policy


@dataclass(frozen=True)
class LasConfig(PolicyConfig):
    thresholds_gpu_s: tuple[float, ...] = field(
        default=(3600.0, 36000.0),
        metadata={"help": "attained-service queue thresholds in GPU-seconds (ascending)"},
    )
    placement: str = field(default="fifo", metadata={"help": "placement policy for admitted jobs"})


class LeastAttainedService(Policy):
    name = "las"
    config_type = LasConfig

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config)
        assert isinstance(self.config, LasConfig)
        thresholds = list(self.config.thresholds_gpu_s)
        if thresholds != sorted(thresholds) or any(t <= 0 for t in thresholds):
            raise ValueError("LAS thresholds must be positive and ascending")
        self._thresholds = thresholds
        placer = make_policy(self.config.placement)
        if not isinstance(placer, PlacementPolicy):
            raise ValueError(f"LAS placement must be a placement policy, not {placer.name}")
        self._placer = placer
        self._scratch: ClusterState | None = None  # reused pass to pass (`scratch`)

    def queue_of(self, attained: float) -> int:
        return bisect.bisect_right(self._thresholds, attained)

    def schedule(self, snapshot: Snapshot, ctx: Context) -> SchedulingResult:
        if not snapshot.pending:
            return SchedulingResult()
        now = snapshot.now
        free = snapshot.cluster.total_gpus * MILLI - snapshot.cluster.allocated_gpu_milli()
        if sum(j.spec.gpu_milli_total for j in snapshot.pending) <= free:
            # Everything waiting fits beside the running jobs: no one needs preempting.
            return self._place(snapshot, list(snapshot.pending), [], ctx)
        # Jobs that may not be preempted stay admitted, and their GPUs stay taken.
        held = {j.id for j in snapshot.running if not j.spec.preemptible}
        taken = sum(j.spec.gpu_milli_total for j in snapshot.running if j.id in held)
        ranked = sorted(
            (j for j in (*snapshot.running, *snapshot.pending) if j.id not in held),
            key=lambda j: (self.queue_of(j.attained(now)), j.spec.submit_time, j.id),
        )
        admitted = held | self._admit(ranked, snapshot.cluster.total_gpus * MILLI - taken)
        victims = [j for j in snapshot.running if j.id not in admitted]
        chosen = [j for j in snapshot.pending if j.id in admitted]
        return self._place(snapshot, chosen, victims, ctx)

    @staticmethod
    def _admit(ranked: list[JobView], capacity: int) -> set[str]:
        """Jobs in priority order while their GPUs fit the cluster."""
        admitted: set[str] = set()
        used = 0
        for job in ranked:
            need = job.spec.gpu_milli_total
            if used + need <= capacity:
                admitted.add(job.id)
                used += need
        return admitted

    def _place(
        self, snapshot: Snapshot, chosen: list[JobView], victims: list[JobView], ctx: Context
    ) -> SchedulingResult:
        now = snapshot.now
        state = self._scratch = snapshot.cluster.scratch(reuse=self._scratch)
        decisions: list[Decision] = []
        for job in victims:
            assert job.placement is not None
            decisions.append(Preempt(job.id, self._why_preempted(job, now)))
            release(state, job.spec, job.placement)
        placed: list[JobView] = []
        for job in chosen:
            placement = self._placer.place(job.spec, state, ctx)
            if placement is None:
                decisions.append(Unschedulable(job.id, "admitted but fragmented", self.name))
                continue
            placed.append(job)
            queue = self.queue_of(job.attained(now))
            decisions.append(Place(job.id, placement, f"las: admitted from queue {queue}"))
        if not victims and len(placed) == len(snapshot.pending):
            return SchedulingResult(tuple(decisions))  # nobody waits: no demotion matters
        stopped = {j.id for j in victims}
        will_run = [j for j in snapshot.running if j.id not in stopped] + placed
        return SchedulingResult(tuple(decisions), wake_at=self._next_demotion(will_run, now))

    def _why_preempted(self, job: JobView, now: float) -> str:
        return f"las: queue {self.queue_of(job.attained(now))} yields to jobs with less service"

    def _next_demotion(self, jobs: list[JobView], now: float) -> float | None:
        """When the first of the admitted jobs crosses into a lower-priority queue."""
        times = []
        for job in jobs:
            attained = job.attained(now)
            queue = self.queue_of(attained)
            gpus = job.spec.gpu_milli_total / MILLI
            if queue < len(self._thresholds) and gpus > 0:
                times.append(now + (self._thresholds[queue] - attained) / gpus)
        return min(times) if times else None
