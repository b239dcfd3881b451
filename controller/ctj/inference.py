"""Inference shares live: the GPU share a CTJ's serving holds while its model retrains
(`spec.inference`), as the simulator's `ContinualRun` holds it. At each instant CTJ
windows open, the openings' serving shares are re-planned before their configs: the
policy's `plan_inference` if it splits inference and retraining (`thief`), else every
stream's full demand (a hold of that size stays on its GPU); each grant is reserved on
one GPU (`policies.reservations`) in the scheduler's ledger, so no policy places over
it, on GPU models in the order of every CTJ stream's throughput (the simulator's order
over all its streams). The grant's serving quality scales the window's value
(`WindowChoice.serving`). A CTJ's reservation is released when the CTJ is deleted or
its last window has ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.ctj.continual import WindowChoice
from controller.scheduling.cache import ClusterCache
from controller.scheduling.workload import build_workload
from policies import Policy, Snapshot
from policies.continual import (
    InferencePlanner,
    Serving,
    WindowOpening,
    WindowPlanner,
    inference_order,
)

RESERVATION_PREFIX = "inference/"


def reservation_key(ctj_key: str) -> str:
    """The ledger key of a CTJ's inference reservation (never a pod uid)."""
    return f"{RESERVATION_PREFIX}{ctj_key}"


def plan_openings(
    policy: Policy,
    cache: ClusterCache,
    openings: Sequence[WindowOpening],
    now: float,
    throughputs: Sequence[Mapping[str, float]],
) -> list[WindowChoice]:
    """The openings' inference shares reserved, then the policy's configs for them (its
    `plan_windows`, else each stream's default) on the cluster with the shares in it,
    as the simulator does at an instant with openings. `throughputs`: every CTJ
    stream's, for where shares go."""
    grants = serve(policy, cache, openings, now, throughputs)
    if not isinstance(policy, WindowPlanner) or cache.ledger.state is None:
        configs = [o.stream.default_config for o in openings]
    else:
        configs = policy.plan_windows(openings, cluster_snapshot(cache, now))
    return [
        WindowChoice(config, o.stream.serving_quality(grants.get(o.stream.id, 0)))
        for o, config in zip(openings, configs, strict=True)
    ]


def cluster_snapshot(cache: ClusterCache, now: float) -> Snapshot:
    """The cluster as the scheduler's next pass would show it: running jobs and the jobs
    still waiting (the simulator's snapshot at an instant has both: a window that waits
    delays the openings' retraining, `plan_windows`' backlog)."""
    state = cache.ledger.state
    assert state is not None
    running = cache.running.views(cache.charges(), state, now)
    waiting = build_workload(cache.pending_pods(), cache.seq, cache.encoder).pending
    pending = [job.view() for job in waiting]
    return Snapshot(cluster=state.view(), running=running, pending=pending, now=now)


def serve(
    policy: Policy,
    cache: ClusterCache,
    openings: Sequence[WindowOpening],
    now: float,
    throughputs: Sequence[Mapping[str, float]] = (),
) -> dict[str, int]:
    """Re-plan and reserve the inference shares of the CTJs opening windows now; returns
    CTJ key → milli-GPU held. Shares go on GPU models in the order of `throughputs`
    (default: the openings')."""
    serving = [Serving(o.stream, o.acc_start) for o in openings if o.stream.inference_milli]
    state = cache.ledger.state
    if not serving or state is None:
        return {}
    if isinstance(policy, InferencePlanner):
        for item in serving:  # the planner splits everything inference holds
            cache.unreserve(reservation_key(item.stream.id))
        grants = policy.plan_inference(serving, openings, cluster_snapshot(cache, now))
    else:
        grants = [item.stream.inference_milli for item in serving]
    order = inference_order(
        throughputs or [o.stream.throughput for o in openings], state.gpu_models
    )
    return {
        item.stream.id: cache.reserve(reservation_key(item.stream.id), grant, order)
        for item, grant in zip(serving, grants, strict=True)
    }
