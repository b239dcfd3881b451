"""A ContinualTrainingJob's windows in a whatif snapshot are the windows the reconciler
opens: for each CTJ, asking the reconciler's `plan` second by second over the horizon
opens exactly the captured windows (index, start, deadline), and no others."""

from __future__ import annotations

import math
from typing import Any

import pytest

from controller.ctj.crd import WINDOW_DEADLINE, WINDOW_LABEL, WINDOW_START, Ctj, ctj_from_json
from controller.ctj.plan import plan
from controller.scheduling.cache import ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import WholeGpu
from controller.whatif.capture import capture
from policies.continual import AccuracyCurve
from tests.conftest import accuracy_json, ctj_metadata

CREATED = 1_700_000_040.0  # a whole minute
HALVING = AccuracyCurve(0.9, 0.5, decay_per_h=3600 * math.log(2) / 600, half_gain_gpu_s=60.0)
"""The gap to the ceiling halves every 600 s: a drop of 0.1 from 0.9 takes
600·log2(4/3) = 249.02 s."""
A100 = {"model": "A100", "relativeThroughput": 1}


def ctj(name: str, retrain: dict[str, Any], **spec: Any) -> Ctj:
    return ctj_from_json(
        {
            "metadata": ctj_metadata(name, now_rfc3339(CREATED)),
            "spec": {"image": "r:1", "retrain": retrain, "resources": {"gpu": {"count": 1}}} | spec,
        }
    )


def opened_by_reconciler(job: Ctj, after: float, until: float) -> list[tuple[int, float, float]]:
    """(index, start, deadline) of each window whose pods `plan` creates at some whole
    second in (after, until), leaving out the window open at `after`."""
    at_start = {m["metadata"]["labels"][WINDOW_LABEL] for m in plan(job, [], after, "g").create}
    seen: dict[int, tuple[int, float, float]] = {}
    for second in range(1, math.ceil(until - after)):
        for manifest in plan(job, [], after + second, "g").create:
            notes, label = manifest["metadata"]["annotations"], manifest["metadata"]["labels"]
            if label[WINDOW_LABEL] not in at_start:
                index = int(label[WINDOW_LABEL])
                seen[index] = (index, float(notes[WINDOW_START]), float(notes[WINDOW_DEADLINE]))
    return sorted(seen.values())


def captured(job: Ctj, now: float, horizon: float) -> list[tuple[int, float, float]]:
    snap = capture(ClusterCache(WholeGpu()), now, ctjs=[job], horizon_s=horizon)
    assert snap.problems == ()
    [windows] = [c.windows for c in snap.ctjs]
    return [(w.index, round(now + w.start_s, 3), round(now + w.deadline_s, 3)) for w in windows]


@pytest.mark.parametrize(
    "job",
    [
        ctj("periodic", {"windowSeconds": 100, "deadlineSeconds": 60}),
        ctj("limited", {"windowSeconds": 90, "deadlineSeconds": 90, "windows": 4}),
        ctj("cron", {"schedule": "*/2 * * * *", "deadlineSeconds": 45}),
        ctj(
            "later",
            {"windowSeconds": 70, "deadlineSeconds": 30, "startTime": now_rfc3339(CREATED + 200)},
        ),
    ],
    ids=lambda job: job.name,
)
def test_captured_windows_are_the_ones_the_reconciler_opens(job: Ctj) -> None:
    now, horizon = CREATED + 130.5, 500.0
    expected = opened_by_reconciler(job, now, now + horizon)
    assert expected  # the horizon holds windows to compare
    assert captured(job, now, horizon) == [(i, round(s, 3), round(d, 3)) for i, s, d in expected]


def test_a_drift_triggered_ctj_has_its_next_window_only() -> None:
    """Window 0 fires at 249.02 s; the next is armed by its outcome, which the capture
    cannot know. (Its periodic clock would open windows at 0, 900, 1800 s.)"""
    job = ctj(
        "drift",
        {
            "windowSeconds": 900,
            "deadlineSeconds": 300,
            "trigger": {"drop": 0.1, "minGapSeconds": 400},
            "configs": [{"name": "small", "workGpuSeconds": 60.0, "quality": 1.0}],
        },
        accuracy=accuracy_json(HALVING, 0.9),
        resources={"gpu": {"count": 1}, "gpuTypes": [A100]},
    )
    now, horizon = CREATED + 100, 2000.0
    windows = captured(job, now, horizon)
    assert windows == opened_by_reconciler(job, now, now + 400)
    [(index, start, deadline)] = windows
    crossing = 600 * math.log2(4 / 3)
    assert (index, start - CREATED, deadline - start) == (0, pytest.approx(crossing, abs=1e-3), 300)
