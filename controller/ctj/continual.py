"""A ContinualTrainingJob in the continual-training vocabulary the simulator's streams
use (`policies.continual`), so `thief`, `edf` and `fairshare` run on CTJs unchanged.

The reconciler writes a window's accuracy facts on its retraining pod (accuracy at the
opening, the gain the chosen config buys, the config, its work, the window's times); the
scheduler's workload builder reads them back here into the same `JobSpec` a simulated
window job has: kind `retrain`, a `RetrainingWork` with the throughput per GPU model, an
`Elasticity` and the `WindowInfo` the allocators value. A CTJ that declares `accuracy`
and `retrain.configs` has its model tracked (`status.model`) and its windows valued;
its one-GPU windows become elastic retraining jobs, from `replicas.min` pods to
`replicas.max` (with `replicas.min` 1 also a quarter or a half of a GPU on one pod; k
whole GPUs on k pods of the window's pod group, which the scheduler adds when the policy
gives the window more, see `controller.scheduling.growth`), never on fewer than
`replicas.min` GPUs, as the simulator's streams with `min_gpus`.

A drift-triggered CTJ (`retrain.trigger`) opens window `k` when `policies.windows`'s
`triggered_window` fires for the tracked model, armed when window `k − 1` settled; the
opened window is recorded as `status.currentWindow` until its outcome is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from controller.ctj.crd import (
    ACC_START,
    ACCURACY,
    CONFIG,
    GAIN,
    MAX_REPLICAS,
    PHASE_COMPLETED,
    SERVING,
    THROUGHPUT,
    WINDOW_DEADLINE,
    WINDOW_END,
    WINDOW_LABEL,
    WINDOW_START,
    WORK_GPU_S,
    Ctj,
    CtjSpec,
    CtjStatus,
    ModelAccuracy,
    RetrainSchedule,
)
from controller.ctj.runtime import SIMULATED_KEY, simulates_runtime, work_done
from controller.kube.objects import GANG_SIZE, POD_GROUP_LABEL, cpu_milli, mem_mib
from policies import MILLI, Elasticity, JobSpec, TaskRequest
from policies.continual import (
    RETRAIN_KIND,
    WINDOW_KEY,
    AccuracyCurve,
    RetrainingWork,
    StreamSpec,
    WindowInfo,
    WindowOpening,
    has_whole_share,
)
from policies.windows import (
    DeployedModel,
    Window,
    WindowClock,
    triggered_window,
    window_clock,
)

if TYPE_CHECKING:
    from controller.ctj.plan import CtjPod

SCALING = 0.9
"""Speed-up per doubling of whole GPUs (the simulator's stream default)."""
RESTART_COST_S = 10.0
"""Seconds a moved retraining job loses (the simulator's stream default)."""
AT_CEILING = "AtCeiling"
"""Outcome reason of a window whose model had nothing to learn (no pods were created)."""


@dataclass(frozen=True, slots=True)
class WindowChoice:
    """What the host decided for an opening window: its config (index into
    `retrain.configs`) and the serving quality of the stream's inference grant while it
    retrains (`StreamSpec.serving_quality`; 1 without a share)."""

    config: int
    serving: float = 1.0


ConfigChooser = Callable[[WindowOpening], WindowChoice]
"""Picks an opening window's config and says what its serving gets."""
WindowsPlanner = Callable[[Sequence[WindowOpening]], list[WindowChoice]]
"""The openings' inference shares and the policy's `plan_windows` on the current
cluster: one choice per opening."""


def stream_of(ctj: Ctj, window: Window) -> StreamSpec:
    """The CTJ as a stream whose windows are all like `window` (a cron window's length
    is its own), for the allocators' config choice at its opening."""
    spec = ctj.spec
    assert spec.accuracy is not None
    return StreamSpec(
        id=ctj.key,
        start_s=window.start,
        window_s=window.end - window.start,
        windows=1,
        deadline_s=window.deadline - window.start,
        task=task_of(spec),
        throughput=throughput_of(spec),
        curve=spec.accuracy,
        configs=spec.configs,
        max_gpus=spec.max_replicas,
        min_gpus=spec.min_replicas,
        scaling=SCALING,
        restart_cost_s=RESTART_COST_S,
        inference_milli=spec.inference_milli,
        inference_gamma=spec.inference_gamma,
    )


def throughput_of(spec: CtjSpec) -> dict[str, float]:
    """Relative throughput per GPU model (`resources.gpuTypes`); any model when empty."""
    return dict(spec.gpu_types) or {"": 1.0}


def is_stream(ctj: Ctj) -> bool:
    """A valid CTJ whose windows are valued as a simulated stream's."""
    return ctj.problem is None and ctj.spec.accuracy is not None and bool(ctj.spec.configs)


def serving_ends(status: CtjStatus) -> float | None:
    """When a CTJ that has recorded its last window stops being a stream (its inference
    share is freed): that window's end, where the simulator's stream ends; None while
    windows remain."""
    window = status.current_window
    if status.phase != PHASE_COMPLETED or window is None:
        return None
    return window.end


def task_of(spec: CtjSpec) -> TaskRequest:
    return TaskRequest(cpu_milli(spec.cpu), mem_mib(spec.memory), spec.gpu.count, spec.gpu.milli)


def ctj_clock(retrain: RetrainSchedule, created: float) -> WindowClock:
    """The spec's window clock, anchored at `startTime` or else at the CTJ's creation;
    raises ValueError for a schedule that cannot work."""
    anchor = retrain.start_time if retrain.start_time is not None else created
    return window_clock(anchor, retrain.deadline_s, retrain.window_s, retrain.cron)


def opening(ctj: Ctj, window: Window, acc_start: float) -> WindowOpening:
    return WindowOpening(stream_of(ctj, window), window.index, acc_start)


WINDOW_FACTS = (CONFIG, WORK_GPU_S, ACC_START, GAIN, SERVING)
"""The annotations `WindowFacts` writes on a window's pods."""


@dataclass(frozen=True, slots=True)
class WindowFacts:
    """What a window's retraining is worth, fixed at its opening."""

    config: str
    work_gpu_s: float
    acc_start: float
    gain: float
    serving: float = 1.0

    def annotations(self) -> dict[str, str]:
        """On the window's pods, for the scheduler (`retraining_job`) and for deploying
        the model when the window completes (`deploy`)."""
        return {
            CONFIG: self.config,
            WORK_GPU_S: repr(self.work_gpu_s),
            ACC_START: repr(self.acc_start),
            GAIN: repr(self.gain),
            SERVING: repr(self.serving),
        }


def window_facts(
    ctj: Ctj, window: Window, model: DeployedModel | None, choose: ConfigChooser | None
) -> WindowFacts | None:
    """The opening window's config (the policy's choice, else the first) and the gain it
    buys from the model's accuracy at the opening; None for a CTJ without accuracy."""
    spec = ctj.spec
    if model is None or spec.accuracy is None:
        return None
    acc_start = model.accuracy(window.start)
    chosen = choose(opening(ctj, window, acc_start)) if choose is not None else WindowChoice(0)
    config = spec.configs[chosen.config if 0 <= chosen.config < len(spec.configs) else 0]
    gain = spec.accuracy.gain(acc_start, config)
    return WindowFacts(config.name, config.work_gpu_s, acc_start, gain, chosen.serving)


def tracked_model(ctj: Ctj, first_opening: float) -> DeployedModel | None:
    """The serving model as the status last recorded it (at `spec.accuracy.initial`, else
    the ceiling, from the first opening before any record), with an observed accuracy
    newer than both the record and the last retraining applied."""
    spec, status = ctj.spec, ctj.status
    if spec.accuracy is None or not spec.configs:
        return None
    curve = spec.accuracy
    if status.model is not None:
        held = status.model
        model = DeployedModel(curve, held.accuracy, held.since, held.deployed)
    else:
        start = curve.ceiling if spec.initial_accuracy is None else spec.initial_accuracy
        model = DeployedModel.initial(curve, start, first_opening)
    seen = status.observed
    if seen is not None and seen.time > max(model.anchor_t, status.last_retrain or -math.inf):
        model.observe(seen.time, seen.value)
    return model


def deploy(model: DeployedModel | None, pods: Sequence[CtjPod], finished_at: float) -> None:
    """A completed window's model is deployed: it had `acc_start + gain` on the data of
    its opening and ages from there (as in the simulator)."""
    facts = next((p for p in pods if p.acc_start is not None and p.gain is not None), None)
    if model is None or facts is None or facts.start is None:
        return
    assert facts.acc_start is not None and facts.gain is not None
    model.deploy(facts.acc_start + facts.gain, facts.start, finished_at)


def model_status(model: DeployedModel | None) -> ModelAccuracy | None:
    if model is None:
        return None
    return ModelAccuracy(model.anchor_acc, model.anchor_t, model.deployed)


def retraining_job(
    spec: JobSpec, annotations: Mapping[str, str], labels: Mapping[str, str]
) -> JobSpec:
    """`spec` (one pod's job) as a continual window job, if the pod carries a window's
    accuracy facts; else `spec` unchanged. Raises ValueError naming a bad annotation."""
    if GAIN not in annotations or spec.task.num_gpus != 1:
        return spec
    elastic = _elasticity(spec, annotations, labels)
    if elastic is None:
        return spec
    curve = _curve(annotations.get(ACCURACY, ""))
    throughput = _throughput(annotations.get(THROUGHPUT, ""))
    work = RetrainingWork(
        _number(annotations, WORK_GPU_S),
        throughput,
        SCALING,
        default=0.0 if throughput else 1.0,
    )
    info = WindowInfo(
        stream_id=spec.id.rsplit("-w", 1)[0],
        index=int(labels.get(WINDOW_LABEL, "0")),
        start=_number(annotations, WINDOW_START),
        deadline=_number(annotations, WINDOW_DEADLINE),
        end=_number(annotations, WINDOW_END),
        gain=_number(annotations, GAIN),
        decay_per_h=curve.decay_per_h,
        config=annotations.get(CONFIG, ""),
        acc_start=_number(annotations, ACC_START),
        serving=_quality(annotations),
    )
    work_done(annotations)  # read where it is bound; a bad value is named here
    simulated = {SIMULATED_KEY: True} if simulates_runtime(annotations) else {}
    return replace(
        spec,
        kind=RETRAIN_KIND,
        work=work,
        elastic=elastic,
        restart_cost_s=RESTART_COST_S,
        attributes={**spec.attributes, WINDOW_KEY: info, **simulated},
    )


def _elasticity(
    spec: JobSpec, annotations: Mapping[str, str], labels: Mapping[str, str]
) -> Elasticity | None:
    """A window job's bounds, as a simulated stream's: its gang size (`replicas.min`) to
    its max GPUs. None for a gang of fractional pods (an ordinary gang: more than one
    GPU is whole GPUs). A window without a pod group cannot grow: a pod added to it
    would be a job of its own."""
    least = _count(annotations, GANG_SIZE, 1)
    if least > 1 and spec.task.gpu_milli != MILLI:
        return None
    most = _count(annotations, MAX_REPLICAS, 1) if POD_GROUP_LABEL in labels else 1
    if spec.replicas > most:
        pods = spec.replicas
        raise ValueError(f"annotation {MAX_REPLICAS}: {most}, but the window has {pods} pods")
    if least > most:
        raise ValueError(f"annotation {MAX_REPLICAS}: {most}, below the gang size {least}")
    if not has_whole_share(least, most):
        raise ValueError(
            f"annotation {MAX_REPLICAS}: {least} to {most} GPUs hold none of 1, 2, 4 or 8 "
            "(the shares the continual allocators give)"
        )
    return Elasticity(least, most)


def _count(annotations: Mapping[str, str], key: str, default: int) -> int:
    text = annotations.get(key)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"annotation {key}: {text!r} is not a positive count")
    return int(text)


def _number(annotations: Mapping[str, str], key: str) -> float:
    try:
        value = float(annotations[key])
    except (KeyError, ValueError):
        raise ValueError(f"annotation {key}: {annotations.get(key)!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"annotation {key}: {value!r} is not finite")
    return value


def _quality(annotations: Mapping[str, str]) -> float:
    """The window's serving quality; 1 on pods written before it was recorded."""
    if SERVING not in annotations:
        return 1.0
    quality = _number(annotations, SERVING)
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"annotation {SERVING}: {quality!r} is not in [0, 1]")
    return quality


def _curve(text: str) -> AccuracyCurve:
    try:
        ceiling, floor, decay, half = (float(v) for v in text.split(","))
        return AccuracyCurve(ceiling, floor, decay, half)
    except ValueError as err:
        raise ValueError(f"annotation {ACCURACY}: {text!r}: {err}") from None


def _throughput(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        model, _, value = item.partition("=")
        try:
            out[model] = float(value)
        except ValueError:
            raise ValueError(f"annotation {THROUGHPUT}: {item!r} is not model=factor") from None
    return out


def triggered(ctj: Ctj, first_opening: float, now: float) -> tuple[Window | None, float | None]:
    """A drift-triggered CTJ's window open at `now` (the recorded `currentWindow` until
    its outcome is recorded, else the next trigger if it has fired) and when to look
    again: `now` while a window is open (to re-arm once it settles), else the next
    trigger's time (None: staleness alone never fires it). Raises ValueError for a
    trigger on a CTJ without the accuracy it watches."""
    spec, status = ctj.spec, ctj.status
    trigger, window_s = spec.retrain.trigger, spec.retrain.window_s
    model = tracked_model(ctj, first_opening)
    if trigger is None or window_s is None or model is None:
        needs = "retrain.windowSeconds, accuracy and retrain.configs"
        raise ValueError(f"a drift trigger needs {needs}")
    last = status.current_window
    if last is not None and last.index >= status.windows_recorded:
        return last, now
    armed_at = max(first_opening, model.anchor_t, _settled_at(ctj))
    last_start = last.start if last is not None else -math.inf
    window = triggered_window(
        trigger,
        model,
        status.windows_recorded,
        armed_at,
        last_start,
        window_s,
        spec.retrain.deadline_s,
    )
    if window is None:
        return None, None
    return (window, now) if window.start <= now else (None, window.start)


def _settled_at(ctj: Ctj) -> float:
    """When the last triggered retraining ended: its completion, else its deadline."""
    status = ctj.status
    last = status.current_window
    if last is None or not status.history or status.history[-1].index != last.index:
        return -math.inf
    outcome = status.history[-1]
    if outcome.completed:
        return outcome.finished_at if outcome.finished_at is not None else last.start
    return last.deadline


class JointConfigs:
    """A `ConfigChooser` that plans every CTJ window opening at one instant together, as
    the simulator plans the openings of an instant (`plan_configs` shares the free GPUs
    among them), and answers each CTJ's reconcile from that plan. `ctjs` and `pods_of`
    read the reconciler's cache: the openings are the CTJs' windows starting at that
    instant (by their clock or a drift trigger that fired then) with neither pods nor an
    outcome yet."""

    def __init__(
        self,
        plan_windows: WindowsPlanner,
        ctjs: Callable[[], Iterable[Ctj]],
        pods_of: Callable[[str], Sequence[CtjPod]],
    ) -> None:
        self.plan_windows = plan_windows
        self.ctjs = ctjs
        self.pods_of = pods_of
        self._chosen: dict[str, tuple[int, float, WindowChoice]] = {}
        """CTJ key → (window, opening, choice) of its latest planned window."""

    def __call__(self, opening: WindowOpening) -> WindowChoice:
        # A window keeps its choice, however often its CTJ is reconciled before its pods
        # exist (a status conflict, its pods withdrawn): the simulator chooses once.
        start = opening.stream.start_s
        held = self._chosen.get(opening.stream.id)
        if held is None or held[:2] != (opening.index, start):
            others = [o for o in self._openings_at(start) if o.stream.id != opening.stream.id]
            together = [opening, *others]
            alive = {ctj.key for ctj in self.ctjs()}
            self._chosen = {k: v for k, v in self._chosen.items() if k in alive}
            for item, choice in zip(together, self.plan_windows(together), strict=True):
                self._chosen[item.stream.id] = (item.index, start, choice)
        return self._chosen[opening.stream.id][2]

    def _openings_at(self, start: float) -> list[WindowOpening]:
        out = []
        for ctj in self.ctjs():
            if ctj.problem is not None:
                continue
            try:
                window, first_opening = _window_at(ctj, start)
            except ValueError:
                continue  # its own reconcile reports the schedule
            model = tracked_model(ctj, first_opening)
            if window is None or window.start != start or model is None:
                continue
            if ctj.status.windows_recorded > window.index:
                continue
            if any(p.window == window.index for p in self.pods_of(ctj.key)):
                continue
            try:
                stream = stream_of(ctj, window)
            except ValueError:
                continue  # its own reconcile reports it; the others' openings go on
            out.append(WindowOpening(stream, window.index, model.accuracy(start)))
        return out


def _window_at(ctj: Ctj, now: float) -> tuple[Window | None, float]:
    """The CTJ's window open at `now` (by its clock, or the drift trigger that fired)
    and its first opening; raises ValueError for a schedule that cannot work."""
    clock = ctj_clock(ctj.spec.retrain, ctj.created)
    first_opening = clock.first_opening()
    if ctj.spec.retrain.trigger is None:
        return clock.current(now), first_opening
    return triggered(ctj, first_opening, now)[0], first_opening
