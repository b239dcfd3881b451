"""Continual-training streams: retraining windows, accuracy over time, retraining configs.

A *stream* is a deployed model that drifts and is retrained once per window (Ekya,
NSDI'22). Window `k` opens at `start + k·window_s` (or at the `k`-th firing of a cron
schedule, `StreamSpec.cron`); its retraining job must finish by the deadline, `deadline_s`
after the opening, else it is withdrawn and the stale model stays.

Accuracy model (all accuracies in [0, 1], times in seconds):

* Staleness: a model anchored at accuracy `a` at time `t0` serves
  `A(t) = floor + (a − floor)·exp(−λ·(t − t0))`, with `λ = decay_per_h / 3600`.
* Abrupt drift: at a window opening the accuracy may drop by a shift (`DriftProfile`),
  clamped at `floor`.
* Retraining gain: a configuration with `W` reference-GPU-seconds of work and quality `q`
  closes the fraction `f(W) = q·W / (W + h)` of the gap to `ceiling` (`h` =
  `half_gain_gpu_s`: a full-quality config closes half the gap at `W = h`). So the model
  retrained in window `k` is anchored at `a_k + (ceiling − a_k)·f(W)` at the window's
  opening `t_k`, where `a_k` is the accuracy at the opening; it ages from `t_k` (it learned
  the data of `t_k`), whenever it is deployed. `f` is concave in `W`: diminishing returns.
* Drift trigger (optional, `DriftTrigger`): instead of one retraining per window, a
  stream retrains when its accuracy falls to a threshold (absolute, or a drop since the
  last deployment), at least `min_gap_s` after the previous trigger; the deadline is
  `deadline_s` after the trigger. Its windows then only pace the abrupt drift.
* Inference share (optional): a stream serving with `inference_milli` milli-GPU delivers
  its model's accuracy times `serving_quality(grant) = (grant / demand)^γ`.
* Deploying that model at time `c` lifts accuracy by `G·exp(−λ(t − t_k))` for `t ≥ c`,
  with `G = (ceiling − a_k)·f(W)`; integrated to the window's end `e` the *uplift* is
  `G·(exp(−λ(c − t_k)) − exp(−λ(e − t_k)))/λ` accuracy-seconds (`G·(e − c)` if `λ = 0`).

Work is in reference-GPU-seconds (the GPU model with throughput 1.0); a job on `n` whole
GPUs of model `m` runs at `throughput[m]·n·scaling^log2(n)`, on a fraction `x` of one GPU
at `throughput[m]·x` (time-slicing).

Over 500 lines because the accuracy model, the stream and window-job types and the
config and inference planners share one set of formulas. The window lifecycle both hosts
obey (clocks, deadlines, outcomes, the deployed model, trigger timing) is
`policies.windows`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from policies.cluster import MILLI
from policies.jobs import AllocationShape, Elasticity, JobSpec, TaskRequest
from policies.windows import Window, WindowClock, window_clock

if TYPE_CHECKING:
    from policies.base import Snapshot

RETRAIN_KIND = "retrain"
WINDOW_KEY = "window"
"""`JobSpec.attributes[WINDOW_KEY]` holds the `WindowInfo` of a retraining job."""


@dataclass(frozen=True, slots=True)
class AccuracyCurve:
    """A stream's accuracy dynamics (see the module docstring for the formulas)."""

    ceiling: float
    floor: float
    decay_per_h: float
    half_gain_gpu_s: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor <= self.ceiling <= 1.0:
            raise ValueError("accuracy curve needs 0 <= floor <= ceiling <= 1")
        if self.decay_per_h < 0 or self.half_gain_gpu_s <= 0:
            raise ValueError("decay must be >= 0 and half_gain_gpu_s > 0")

    @property
    def decay_per_s(self) -> float:
        return self.decay_per_h / 3600.0

    def decayed(self, accuracy: float, elapsed_s: float) -> float:
        """Accuracy `elapsed_s` after the model stood at `accuracy`."""
        return self.floor + (accuracy - self.floor) * math.exp(-self.decay_per_s * elapsed_s)

    def integral(self, accuracy: float, duration_s: float) -> float:
        """Accuracy-seconds served over `duration_s` starting at `accuracy`."""
        rate = self.decay_per_s
        if rate == 0.0:
            return accuracy * duration_s
        above = (accuracy - self.floor) * (1.0 - math.exp(-rate * duration_s)) / rate
        return self.floor * duration_s + above

    def gap_closed(self, config: RetrainConfig) -> float:
        """f(W) = q·W/(W + h): the share of the gap to `ceiling` a config closes."""
        work = config.work_gpu_s
        return config.quality * work / (work + self.half_gain_gpu_s)

    def gain(self, accuracy: float, config: RetrainConfig) -> float:
        """G: accuracy points a retraining from `accuracy` adds at its data time."""
        return max(0.0, self.ceiling - accuracy) * self.gap_closed(config)


@dataclass(frozen=True, slots=True)
class RetrainConfig:
    """One Ekya-style retraining configuration (epochs, layers, data fraction collapsed
    into its cost and the share of the accuracy gap it can close)."""

    name: str
    work_gpu_s: float
    quality: float = 1.0

    def __post_init__(self) -> None:
        if self.work_gpu_s <= 0 or not 0.0 < self.quality <= 1.0:
            raise ValueError(f"config {self.name}: need work > 0 and 0 < quality <= 1")


@dataclass(frozen=True, slots=True)
class DriftProfile:
    """Abrupt drift: at each window opening, with probability `shift_prob`, accuracy drops
    by an exponentially distributed amount of mean `shift_mean`."""

    shift_prob: float = 0.0
    shift_mean: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.shift_prob <= 1.0 or self.shift_mean < 0:
            raise ValueError("drift needs 0 <= shift_prob <= 1 and shift_mean >= 0")

    def shifts(self, windows: int, seed: int) -> np.ndarray:
        """The drop at each window opening; a pure function of the profile and seed."""
        rng = np.random.default_rng(seed)
        hits = rng.random(windows) < self.shift_prob
        sizes = rng.exponential(self.shift_mean, windows) if self.shift_mean > 0 else 0.0
        return np.where(hits, sizes, 0.0)


@dataclass(frozen=True, slots=True)
class DriftTrigger:
    """Retrain when accuracy falls to `below`, or to `drop` under what the last retraining
    deployed, whichever comes first (0 turns a criterion off); triggers are at least
    `min_gap_s` apart, so a model that cannot recover does not retrain back to back."""

    below: float = 0.0
    drop: float = 0.0
    min_gap_s: float = 600.0

    def __post_init__(self) -> None:
        if self.below < 0 or self.drop < 0 or self.below == self.drop == 0:
            raise ValueError("drift trigger needs below > 0 or drop > 0 (and neither < 0)")
        if self.min_gap_s <= 0:
            raise ValueError("drift trigger needs min_gap_s > 0")

    def threshold(self, deployed: float) -> float:
        """Accuracy at or below which it fires, given what the last retraining deployed."""
        return max(self.below, deployed - self.drop if self.drop > 0 else 0.0)

    @staticmethod
    def crossing_s(curve: AccuracyCurve, accuracy: float, threshold: float) -> float:
        """Seconds until a model now at `accuracy` decays to `threshold`: 0 if it is there
        already, infinite if staleness alone never takes it there (only a shift can)."""
        if accuracy <= threshold:
            return 0.0
        if threshold <= curve.floor or curve.decay_per_s == 0.0:
            return math.inf
        return math.log((accuracy - curve.floor) / (threshold - curve.floor)) / curve.decay_per_s


WHOLE_SHARES = (1, 2, 4, 8)
"""Whole-GPU shares the share allocators (`thief`, `edf`, `fairshare`) give a window:
doublings, the steps the speed-up model `n·scaling^log2(n)` is written in
(`policies.share_model.LEVELS_MILLI` adds a quarter and a half of one GPU)."""


def has_whole_share(min_gpus: int, max_gpus: int) -> bool:
    """Whether a window elastic from `min_gpus` to `max_gpus` GPUs can be given one of
    `WHOLE_SHARES`; without one the share allocators never place it (min 3, max 3)."""
    return any(min_gpus <= n <= max_gpus for n in WHOLE_SHARES)


def speedup(num_gpus: int, gpu_milli: int, scaling: float) -> float:
    """Reference speed of an allocation relative to one whole GPU of the same model."""
    if num_gpus <= 1:
        return gpu_milli / MILLI if num_gpus == 1 else 0.0
    return num_gpus * scaling ** math.log2(num_gpus)


@dataclass(frozen=True, slots=True)
class RetrainingWork:
    """Work model of a retraining job: `work` reference-GPU-seconds, sped up per GPU model
    by `throughput` and by the allocation size (`speedup`)."""

    work: float
    throughput: Mapping[str, float]
    scaling: float = 0.9
    default: float = 0.0

    @property
    def total(self) -> float:
        return self.work

    def model_speed(self, model: str) -> float:
        return self.throughput.get(model, self.default)

    def rate(self, shape: AllocationShape, done: float) -> float:
        gpus = shape.num_gpus
        return self.model_speed(shape.gpu_model) * speedup(gpus, shape.gpu_milli, self.scaling)


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """What a policy knows of a retraining job's window (`JobSpec.attributes["window"]`)."""

    stream_id: str
    index: int
    start: float
    deadline: float
    end: float
    gain: float
    decay_per_h: float
    config: str
    acc_start: float
    serving: float = 1.0
    """Serving quality of the stream's inference share: the uplift it delivers is scaled
    by it (1 without an inference share)."""

    def uplift(self, completion: float) -> float:
        """Delivered accuracy-seconds added over the window if the job completes at
        `completion`."""
        if completion > self.deadline or self.gain <= 0.0:
            return 0.0
        rate = self.decay_per_h / 3600.0
        since, span = completion - self.start, self.end - self.start
        return float(uplift(self.gain * self.serving, rate, since, span))


def uplift(
    gain: float | np.ndarray,
    rate: float,
    since_start: float | np.ndarray,
    window: float | np.ndarray,
) -> np.ndarray:
    """G·(exp(−λ·c) − exp(−λ·e))/λ for completion `c` and end `e` measured from the
    window's opening. Works elementwise on numpy arrays too."""
    since = np.maximum(since_start, 0.0)
    if rate == 0.0:
        return gain * np.maximum(window - since, 0.0)
    value = gain * (np.exp(-rate * since) - math.exp(-rate * window)) / rate
    return np.maximum(value, 0.0)


@dataclass(frozen=True)
class StreamSpec:
    """A long-lived model stream: its windows, its retraining request and its curves.

    `task` is the request of one replica of each window's job (whole or fractional
    GPU); an ordinary policy places `min_gpus` of them, and accuracy-aware policies may
    give a job any share from `min_gpus` to `max_gpus` (a window never runs on fewer
    than `min_gpus` GPUs: a fraction of one GPU needs `min_gpus` 1).
    """

    id: str
    start_s: float
    window_s: float
    windows: int
    deadline_s: float
    task: TaskRequest
    throughput: Mapping[str, float]
    curve: AccuracyCurve
    configs: tuple[RetrainConfig, ...]
    default_config: int = 0
    initial_accuracy: float | None = None
    max_gpus: int = 1
    scaling: float = 0.9
    min_gpus: int = 1
    allowed_models: frozenset[str] | None = None
    restart_cost_s: float = 10.0
    priority: int = 0
    drift: DriftProfile = field(default_factory=DriftProfile)
    drift_seed: int = 0
    trigger: DriftTrigger | None = None
    """None: one retraining per window; else retrain on drift (the windows pace the
    abrupt shifts and the inference re-plans only)."""
    inference_milli: int = 0
    inference_gamma: float = 0.5
    cron: str | None = None
    """None: a window every `window_s`. Else windows open at this cron expression's
    firings (`policies.windows.CronSchedule`), the first at or after `start_s`, each
    lasting until the next, its deadline `deadline_s` after the opening capped at the
    next firing; `window_s` is then 0."""
    epoch_s: float = 0.0
    """Unix time of the stream's time 0: a cron schedule fires by the wall clock (a
    recorded run's origin, for a replay)."""

    def __post_init__(self) -> None:
        if self.cron is not None:
            self._check_cron()
        elif self.window_s <= 0 or self.windows < 1:
            raise ValueError(f"stream {self.id}: need window_s > 0 and windows >= 1")
        elif not 0 < self.deadline_s <= self.window_s:
            raise ValueError(f"stream {self.id}: need 0 < deadline_s <= window_s")
        if not self.configs or not 0 <= self.default_config < len(self.configs):
            raise ValueError(f"stream {self.id}: default_config must index configs")
        if self.task.num_gpus != 1 or not 1 <= self.min_gpus <= self.max_gpus:
            raise ValueError(
                f"stream {self.id}: request one GPU (or a fraction), 1 <= min_gpus <= max_gpus"
            )
        if self.min_gpus > 1 and self.task.gpu_milli != MILLI:
            raise ValueError(f"stream {self.id}: min_gpus above 1 needs whole GPUs (gpu_milli)")
        if not has_whole_share(self.min_gpus, self.max_gpus):
            raise ValueError(
                f"stream {self.id}: min_gpus {self.min_gpus} to max_gpus {self.max_gpus} must "
                f"include 1, 2, 4 or 8 GPUs (the shares thief, edf and fairshare give)"
            )
        if not any(v > 0 for v in self.throughput.values()):
            raise ValueError(f"stream {self.id}: throughput needs a positive entry")
        if not 0 <= self.inference_milli <= MILLI or not 0 < self.inference_gamma <= 1:
            raise ValueError(f"stream {self.id}: need 0 <= inference_milli <= 1000, 0 < γ <= 1")

    def _check_cron(self) -> None:
        if self.window_s != 0 or self.trigger is not None:
            raise ValueError(
                f"stream {self.id}: a cron stream's windows open at its firings and last "
                "until the next (window_s 0, no trigger)"
            )
        if self.windows < 1 or self.deadline_s <= 0:
            raise ValueError(f"stream {self.id}: need windows >= 1 and deadline_s > 0")
        try:
            self.clock().first_opening()
        except ValueError as err:
            raise ValueError(f"stream {self.id}: {err}") from None

    def clock(self) -> WindowClock:
        """When the stream's windows open (`policies.windows`): every `window_s` from
        `start_s`, or at the firings of `cron`."""
        return window_clock(self.start_s, self.deadline_s, self.window_s, self.cron, self.epoch_s)

    def for_window(self, window: Window) -> StreamSpec:
        """The stream as the allocators value one window of its clock: a stream of that
        one window, its length and deadline the window's own (a cron window lasts until
        the next firing), as the controller values a CTJ's windows."""
        return replace(
            self,
            start_s=window.start,
            window_s=window.end - window.start,
            windows=1,
            deadline_s=window.deadline - window.start,
            cron=None,
            epoch_s=0.0,
        )

    def serving_quality(self, grant_milli: float) -> float:
        """Share of the model's accuracy delivered when inference gets `grant_milli` of its
        demand: (grant / demand)^γ, concave (skipped frames reuse nearby results)."""
        if self.inference_milli == 0:
            return 1.0
        return min(grant_milli / self.inference_milli, 1.0) ** self.inference_gamma

    @property
    def start_accuracy(self) -> float:
        return self.curve.ceiling if self.initial_accuracy is None else self.initial_accuracy

    @cached_property
    def end_s(self) -> float:
        """When the last window ends."""
        return self.window_start(self.windows)

    def window_start(self, index: int) -> float:
        if self.cron is None:
            return self.start_s + index * self.window_s
        for window in self.clock().openings():
            if window.index == index:
                return window.start
        raise AssertionError("a clock's openings never end")

    def window_job_id(self, index: int) -> str:
        return f"{self.id}/w{index:05d}"

    def window_job(
        self,
        index: int,
        config: int,
        acc_start: float,
        start: float | None = None,
        serving: float = 1.0,
    ) -> JobSpec:
        """The retraining job of window `index` using `configs[config]`, given the
        accuracy `acc_start` the stream has at the window's opening. A drift-triggered
        window opens at `start` and is valued over one window length (or to the end)."""
        chosen = self.configs[config]
        start = self.window_start(index) if start is None else start
        info = WindowInfo(
            stream_id=self.id,
            index=index,
            start=start,
            deadline=start + self.deadline_s,
            end=min(start + self.window_s, self.end_s),
            gain=self.curve.gain(acc_start, chosen),
            decay_per_h=self.curve.decay_per_h,
            config=chosen.name,
            acc_start=acc_start,
            serving=serving,
        )
        return JobSpec(
            id=self.window_job_id(index),
            submit_time=start,
            task=self.task,
            work=self._works[config],
            replicas=self.min_gpus,
            allowed_models=self.allowed_models,
            priority=self.priority,
            restart_cost_s=self.restart_cost_s,
            kind=RETRAIN_KIND,
            elastic=self._elastic,
            attributes={WINDOW_KEY: info},
        )

    @cached_property
    def _works(self) -> tuple[RetrainingWork, ...]:
        # One immutable work model per config, shared by all of the stream's windows.
        return tuple(
            RetrainingWork(c.work_gpu_s, self.throughput, self.scaling) for c in self.configs
        )

    @cached_property
    def _elastic(self) -> Elasticity:
        return Elasticity(self.min_gpus, self.max_gpus)


def window_info(job: JobSpec) -> WindowInfo | None:
    info = job.attributes.get(WINDOW_KEY)
    return info if isinstance(info, WindowInfo) else None


@dataclass(frozen=True, slots=True)
class WindowOpening:
    """A window about to open: the stream and its accuracy at the opening."""

    stream: StreamSpec
    index: int
    acc_start: float


@dataclass(frozen=True, slots=True)
class Serving:
    """A stream with an inference demand and its model's accuracy now."""

    stream: StreamSpec
    accuracy: float


@runtime_checkable
class InferencePlanner(Protocol):
    """A policy that splits GPU between streams' inference and retraining at each window
    (Ekya's thief). Hosts without one grant every stream its full inference demand."""

    def plan_inference(
        self, serving: Sequence[Serving], openings: Sequence[WindowOpening], snapshot: Snapshot
    ) -> list[int]:
        """Milli-GPU granted to each serving stream's inference, in order."""
        ...


INFERENCE_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Inference grants the thief considers, as shares of a stream's demand."""


def split_inference(
    serving: Sequence[Serving], expected: Sequence[float], price: float
) -> list[int]:
    """Per stream, the grant `x` (a step of its demand) maximising `s(x)·M − price·x`:
    `M` is the model accuracy-seconds it is `expected` to serve over the window and
    `price` the accuracy-seconds retraining loses per milli-GPU inference takes."""
    grants = []
    for item, model_s in zip(serving, expected, strict=True):
        stream = item.stream
        options = [round(step * stream.inference_milli) for step in INFERENCE_STEPS]
        grants.append(max(options, key=lambda x: stream.serving_quality(x) * model_s - price * x))
    return grants


@runtime_checkable
class WindowPlanner(Protocol):
    """A policy that picks each opening window's retraining configuration (Ekya's
    per-window config choice). Hosts without one use each stream's `default_config`."""

    def plan_windows(self, openings: Sequence[WindowOpening], snapshot: Snapshot) -> list[int]:
        """One config index per opening, in order."""
        ...


def inference_models(streams: Sequence[StreamSpec], models: Sequence[str]) -> list[int]:
    """Indices of `models` in the order hosts place inference shares: slowest for
    retraining first (median speed over `streams`), where inference displaces least."""
    return inference_order([s.throughput for s in streams], models)


def inference_order(throughputs: Sequence[Mapping[str, float]], models: Sequence[str]) -> list[int]:
    """`inference_models` from each stream's relative throughput per GPU model (a host
    that knows its streams only as such maps: the controller's CTJs)."""
    speeds = [float(np.median([t.get(m, 0.0) for t in throughputs])) for m in models]
    return sorted(range(len(models)), key=lambda m: (speeds[m], models[m]))


def fluid_uplifts(
    openings: Sequence[WindowOpening], choices: Sequence[int], rate: float
) -> list[float]:
    """Each opening's uplift (model accuracy-seconds) in the fluid model of `plan_configs`
    when the free GPUs retrain `rate` reference-GPU-seconds per second."""
    if rate <= 0 or not openings:
        return [0.0] * len(openings)
    plan = _FluidPlan(openings, rate)
    plan.choice = list(choices)
    return plan.uplifts()


def plan_configs(
    openings: Sequence[WindowOpening], rate: float, sweeps: int = 2, delay_s: float = 0.0
) -> list[int]:
    """Jointly pick each opening window's config (Ekya's config choice under contention).

    Fluid model of the window: the free GPUs retrain `rate` reference-GPU-seconds per
    second, one job after another in Smith's order (work per gain ascending, which
    maximises the total `G·(e − c)` for fixed configs), but no job faster than its own
    largest share allows on its fastest GPU model (optimistic: those GPUs may be taken).
    Starting from each stream's cheapest config, every sweep visits
    the jobs in that order and gives each the config that most raises its own uplift
    (zero past its deadline) minus the delay its extra work adds to the later jobs that
    still meet their deadlines (extra work / `rate`, times their gains). `delay_s` is the
    time the retraining already waiting takes first (drift triggers open one by one).
    """
    if not openings:
        return []
    plan = _FluidPlan(openings, rate, delay_s)
    if rate > 0:
        for _ in range(sweeps):
            plan.sweep()
    return plan.choice


class _FluidPlan:
    def __init__(
        self, openings: Sequence[WindowOpening], rate: float, delay_s: float = 0.0
    ) -> None:
        self.openings = openings
        self.rate = rate
        self.delay_s = delay_s
        self.gains = [
            [o.stream.curve.gain(o.acc_start, c) for c in o.stream.configs] for o in openings
        ]
        self.works = [[c.work_gpu_s for c in o.stream.configs] for o in openings]
        self.fastest = [_fastest(o.stream) for o in openings]
        self.choice = [_cheapest(o.stream) for o in openings]

    def uplifts(self) -> list[float]:
        order = self._smith_order()
        finish = self.delay_s + np.cumsum([self._work(i) for i in order]) / self.rate
        values = [0.0] * len(order)
        for k, i in enumerate(order):
            start = float(finish[k]) - self._work(i) / self.rate
            values[i] = self._uplift(i, self.choice[i], start)
        return values

    def sweep(self) -> None:
        order = self._smith_order()
        finish = self.delay_s + np.cumsum([self._work(i) for i in order]) / self.rate
        meets = [finish[k] <= self.openings[i].stream.deadline_s for k, i in enumerate(order)]
        gains = np.array([self.gains[i][self.choice[i]] for i in order]) * np.array(meets)
        behind = np.concatenate((np.cumsum(gains[::-1])[::-1][1:], [0.0]))
        shift = 0.0
        for k, i in enumerate(order):
            start = float(finish[k]) + shift - self._work(i) / self.rate
            best = self._best(i, start, float(behind[k]))
            shift += (self.works[i][best] - self._work(i)) / self.rate
            self.choice[i] = best

    def _best(self, i: int, start: float, behind: float) -> int:
        current = self._work(i)
        best, best_value = self.choice[i], -math.inf
        for c, work in enumerate(self.works[i]):
            delay = (work - current) / self.rate * behind
            value = self._uplift(i, c, start) - delay
            if value > best_value + 1e-12 or (value > best_value - 1e-12 and work < current):
                best, best_value = c, value
        return best

    def _uplift(self, i: int, config: int, start: float) -> float:
        stream = self.openings[i].stream
        work = self.works[i][config]
        finish = max(start + work / self.rate, work / self.fastest[i])
        if finish > stream.deadline_s:
            return 0.0
        gain, rate, window = self.gains[i][config], stream.curve.decay_per_s, stream.window_s
        if rate == 0.0:
            return gain * max(window - finish, 0.0)
        return max(gain * (math.exp(-rate * finish) - math.exp(-rate * window)) / rate, 0.0)

    def _work(self, i: int) -> float:
        return self.works[i][self.choice[i]]

    def _smith_order(self) -> list[int]:
        """Work per gain ascending; ties by stream and window, so the plan does not
        depend on the order a host lists the openings in."""
        return sorted(range(len(self.openings)), key=self._rank)

    def _rank(self, i: int) -> tuple[float, str, int]:
        opening = self.openings[i]
        work_per_gain = self._work(i) / max(self.gains[i][self.choice[i]], 1e-12)
        return work_per_gain, opening.stream.id, opening.index


def _fastest(stream: StreamSpec) -> float:
    """Reference speed of the stream's largest share on its fastest GPU model."""
    return max(stream.throughput.values()) * speedup(stream.max_gpus, MILLI, stream.scaling)


def _cheapest(stream: StreamSpec) -> int:
    return min(range(len(stream.configs)), key=lambda i: stream.configs[i].work_gpu_s)
