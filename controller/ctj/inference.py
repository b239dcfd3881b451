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

from collections.abc import Callable, Mapping, Sequence

from controller.ctj.continual import WindowChoice
from controller.scheduling.cache import ClusterCache
from policies import Policy, Snapshot
from policies.continual import (
    InferencePlanner,
    Serving,
    WindowOpening,
    WindowPlanner,
    inference_order,
)

RESERVATION_PREFIX = "inference/"
SnapshotSource = Callable[[float], Snapshot | None]
"""The scheduler's view of the cluster at a time (`Scheduler.snapshot_now`)."""


def reservation_key(ctj_key: str) -> str:
    """The ledger key of a CTJ's inference reservation (never a pod uid)."""
    return f"{RESERVATION_PREFIX}{ctj_key}"


def plan_openings(
    policy: Policy,
    cache: ClusterCache,
    openings: Sequence[WindowOpening],
    snapshot_at: SnapshotSource,
    throughputs: Sequence[Mapping[str, float]],
) -> list[WindowChoice]:
    """The openings' inference shares reserved, then the policy's configs for them (its
    `plan_windows`, else each stream's default) on the cluster with the shares in it,
    as the simulator does at an instant with openings. `snapshot_at`: the scheduler's
    view of the cluster (`Scheduler.snapshot_now`); `throughputs`: every CTJ stream's,
    for where shares go."""
    now = openings[0].stream.start_s if openings else 0.0
    grants = serve(policy, cache, openings, snapshot_at, throughputs)
    snapshot = snapshot_at(now)
    if snapshot is None or not isinstance(policy, WindowPlanner):
        configs = [o.stream.default_config for o in openings]
    else:
        configs = policy.plan_windows(openings, snapshot)
    return [
        WindowChoice(config, o.stream.serving_quality(grants.get(o.stream.id, 0)))
        for o, config in zip(openings, configs, strict=True)
    ]


def serve(
    policy: Policy,
    cache: ClusterCache,
    openings: Sequence[WindowOpening],
    snapshot_at: SnapshotSource,
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
        snapshot = snapshot_at(openings[0].stream.start_s)
        assert snapshot is not None  # the cluster is known (`state`)
        grants = policy.plan_inference(serving, openings, snapshot)
    else:
        grants = [item.stream.inference_milli for item in serving]
    order = inference_order(
        throughputs or [o.stream.throughput for o in openings], state.gpu_models
    )
    return {
        item.stream.id: cache.reserve(reservation_key(item.stream.id), grant, order)
        for item, grant in zip(serving, grants, strict=True)
    }
