"""A ContinualTrainingJob as the simulator's stream (`policies.continual.StreamSpec`), so
the CTJs of a recorded run replay in `simulator.continual.ContinualRun` under the same
policy and their windows can be compared with the live ones.

The stream is the one the controller already values the CTJ's windows as
(`controller.ctj.continual.stream_of`): the same curve, configs, elastic bounds,
throughput per GPU model, restart cost and inference share, with the schedule added:
periodic windows from `retrain.startTime` (else the creation), cron firings from then on
(the stream fires by the wall clock: its `epoch_s` is the origin), or drift triggers
paced by `windowSeconds`. Times are seconds after `origin` (the recording's zero).
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.ctj.continual import (
    RESTART_COST_S,
    SCALING,
    is_stream,
    task_of,
    throughput_of,
)
from controller.ctj.crd import Ctj
from policies.continual import StreamSpec


def recorded_stream(ctj: Ctj, origin: float) -> StreamSpec:
    """The CTJ as a stream whose time 0 is `origin` (Unix seconds). Raises ValueError
    naming the field for a CTJ the simulator cannot replay: one that could not be read
    (its `problem`), no `retrain.windows` (a stream has an end), or no `accuracy` and
    `configs`."""
    spec, retrain = ctj.spec, ctj.spec.retrain
    if ctj.problem is not None:
        raise ValueError(f"{ctj.key}: not a valid CTJ, so not replayed: {ctj.problem}")
    if not is_stream(ctj) or spec.accuracy is None:
        raise ValueError(f"{ctj.key}: spec.accuracy and spec.retrain.configs are needed")
    if retrain.windows is None:
        raise ValueError(f"{ctj.key}: spec.retrain.windows: a replayed stream needs an end")
    anchor = retrain.start_time if retrain.start_time is not None else ctj.created
    return StreamSpec(
        id=ctj.key,
        start_s=anchor - origin,
        window_s=float(retrain.window_s or 0),
        cron=retrain.cron,
        epoch_s=origin,
        windows=retrain.windows,
        deadline_s=float(retrain.deadline_s),
        task=task_of(spec),
        throughput=throughput_of(spec),
        curve=spec.accuracy,
        configs=spec.configs,
        initial_accuracy=spec.initial_accuracy,
        max_gpus=spec.max_replicas,
        min_gpus=spec.min_replicas,
        scaling=SCALING,
        allowed_models=frozenset(spec.gpu_types) or None,
        restart_cost_s=RESTART_COST_S,
        trigger=retrain.trigger,
        inference_milli=spec.inference_milli,
        inference_gamma=spec.inference_gamma,
    )


def recorded_streams(ctjs: Iterable[Ctj], origin: float) -> list[StreamSpec]:
    """Every CTJ as a stream, in key order (`recorded_stream`)."""
    return [recorded_stream(c, origin) for c in sorted(ctjs, key=lambda c: c.key)]
