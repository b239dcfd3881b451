"""A CTJ window's simulated runtime: on a dev/test cluster (KWOK), a window pod that opts
in with `ctj.gpufleet.io/simulated-runtime: "true"` runs as long as the simulator says
its retraining takes on the allocation the policy granted.

When the scheduler binds such a window, it writes `gpufleet.io/sim-runtime` (which the
KWOK stage `gpufleet-complete` waits for) as the simulator's `JobRun` charges it:

    runtime = restart + (work − done) / rate(shape)

`rate` is the window's `RetrainingWork` on the granted shape (throughput of the GPU
model × the share or the 0.9-per-doubling speed-up of k whole GPUs), `done` the
reference-GPU-seconds it finished before (`ctj.gpufleet.io/work-done`, carried when it
is moved) and `restart` its restart cost if it ran before (`restarts` > 0), as the
simulator delays a restarted job's progress. Every pod of the window gets the same
runtime, so the window completes when the simulator's job would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from controller.ctj.crd import GROUP
from controller.kube.objects import RESTARTS, RUNTIME
from policies import AllocationShape, JobSpec, JobView
from policies.continual import RETRAIN_KIND

SIMULATED_RUNTIME = f"{GROUP}/simulated-runtime"
"""`"true"`: the window's pods get the runtime their allocation earns (KWOK only)."""
WORK_DONE = f"{GROUP}/work-done"
"""Reference-GPU-seconds of the window's retraining done before its current placement."""
SIMULATED_KEY = "simulated_runtime"
"""`JobSpec.attributes[SIMULATED_KEY]` is True for a window that opted in."""


def simulates_runtime(annotations: Mapping[str, str]) -> bool:
    """Whether the pod opted in; raises ValueError naming the annotation if unreadable."""
    text = annotations.get(SIMULATED_RUNTIME)
    if text is None:
        return False
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(f"annotation {SIMULATED_RUNTIME}: {text!r} is neither true nor false")
    return text.strip().lower() == "true"


def work_done(annotations: Mapping[str, str]) -> float:
    """The work done before this placement (0 if never moved); raises ValueError naming
    the annotation if unreadable."""
    text = annotations.get(WORK_DONE)
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"annotation {WORK_DONE}: {text!r} is not a non-negative number")
    return value


def restart_delay(spec: JobSpec, restarts: int) -> float:
    """Seconds a placement makes no progress: the restart cost of a job that ran before."""
    return spec.restart_cost_s if restarts > 0 else 0.0


def progress(view: JobView, now: float) -> float:
    """A running window's work done by `now` (as `JobRun.sync` counts it: no progress
    during the restart delay), capped at its total."""
    if view.shape is None or view.placement is None:
        return view.done
    rate = view.spec.work.rate(view.shape, view.done)
    ran = max(0.0, now - view.restart_until)
    return min(view.spec.work.total, view.done + rate * ran)


def carried_work(view: JobView | None, now: float) -> dict[str, str]:
    """The work-done annotation a moved retraining window's pods are bound with."""
    if view is None or view.spec.kind != RETRAIN_KIND:
        return {}
    return {WORK_DONE: repr(progress(view, now))}


def granted_runtime(
    spec: JobSpec, shape: AllocationShape, resumed: Mapping[str, str], restarts: int
) -> dict[str, str]:
    """The `gpufleet.io/sim-runtime` (and work done) to bind an opted-in window with on
    `shape`; `resumed` holds what a moved window carries (its restarts and work done),
    else `restarts` is its pods'. Empty for other jobs or a shape without throughput."""
    if not spec.attributes.get(SIMULATED_KEY):
        return {}
    done = work_done(resumed)
    rate = spec.work.rate(shape, done)
    if rate <= 0:
        return {}
    moves = int(resumed.get(RESTARTS, restarts))
    seconds = restart_delay(spec, moves) + max(spec.work.total - done, 0.0) / rate
    # A runtime must be positive (`controller.kube.objects`): a millisecond at least.
    return {RUNTIME: f"{max(seconds, 0.001):.3f}s", WORK_DONE: repr(done)}
