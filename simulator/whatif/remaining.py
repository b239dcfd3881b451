"""How long a job still has to run, and where that number came from.

Sources, in the order they are tried (docs/whatif.md):

1. `declared`: the runtime the job states (`gpufleet.io/sim-runtime`), less what it has
   run, plus the *overrun*: the median of how much longer than declared the finished
   jobs in the history ran (a cluster's start-up and completion latency; 0 without such
   jobs, and never negative).
2. `ctj-history`: for a ContinualTrainingJob's window, how long its completed windows
   took (opening to finish), drawn at random.
3. `shape-history`: durations of finished jobs of the same shape (tasks, GPUs per task,
   GPU share), drawn at random.
4. `default`: the stated default runtime, less what the job has run; a job already past
   it is given the default once more (it has shown it runs long, nothing says how long).

A running job has run `elapsed` seconds: a drawn duration must exceed that (the job is
still running), and a history with no such duration is passed over for the next source.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from traces.snapshot import ClusterSnapshot, Shape

MIN_REMAINING_S = 1e-3
"""A job due to finish already finishes this soon (a duration must be positive)."""


class Source(enum.StrEnum):
    DECLARED = "declared"
    CTJ_HISTORY = "ctj-history"
    SHAPE_HISTORY = "shape-history"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class RemainingTime:
    """A fixed remaining time, or equally likely `draws` to pick from per sample."""

    source: Source
    fixed: float | None = None
    draws: tuple[float, ...] = ()

    @property
    def uncertain(self) -> bool:
        return self.fixed is None

    def sample(self, rng: np.random.Generator) -> float:
        if self.fixed is not None:
            return self.fixed
        return self.draws[int(rng.integers(len(self.draws)))]


class RemainingTimes:
    """The remaining-time sources of one snapshot, indexed once."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.default_s = snapshot.default_runtime_s
        overruns = [h.duration_s - h.declared_s for h in snapshot.history if h.declared_s]
        self.overrun_s = max(0.0, float(np.median(overruns))) if overruns else 0.0
        by_shape: dict[Shape, list[float]] = {}
        for h in snapshot.history:
            by_shape.setdefault(Shape(h.replicas, h.num_gpus, h.gpu_milli), []).append(h.duration_s)
        self.by_shape: Mapping[Shape, Sequence[float]] = by_shape
        self.by_ctj: Mapping[str, Sequence[float]] = {
            c.name: c.completed_window_s for c in snapshot.ctjs
        }

    def estimate(
        self, shape: Shape, declared: float | None, ctj: str = "", elapsed: float = 0.0
    ) -> RemainingTime:
        """The first source that knows: declared, the CTJ's windows, the shape's, default."""
        if declared is not None:
            due = declared + self.overrun_s - elapsed
            return RemainingTime(Source.DECLARED, max(due, MIN_REMAINING_S))
        for source, durations in (
            (Source.CTJ_HISTORY, self.by_ctj.get(ctj, ()) if ctj else ()),
            (Source.SHAPE_HISTORY, self.by_shape.get(shape, ())),
        ):
            left = tuple(sorted(d - elapsed for d in durations if d > elapsed))
            if len(left) == 1:
                return RemainingTime(source, left[0])
            if left:
                return RemainingTime(source, draws=left)
        left_s = self.default_s - elapsed
        return RemainingTime(Source.DEFAULT, left_s if left_s > 0 else self.default_s)
