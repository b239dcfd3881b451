"""Why no node fits, found once per request shape in a pass: the same reports as a
diagnosis per job, with far fewer diagnoses when many jobs wait alike."""

from __future__ import annotations

from typing import Any

import pytest

import controller.scheduling.scheduler as scheduler_module
from controller.scheduling.cache import NODES, ClusterCache
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.scheduler import Scheduler
from policies import make_policy
from tests.test_controller_scheduler import node_json, one_round, pod_json


def reports_and_diagnoses(monkeypatch: pytest.MonkeyPatch, per_job: bool) -> tuple[Any, int]:
    """One best-fit round over nodes of 2 and 4 GPUs and, in queue order, pods asking
    for 8, 4 (placed on the 4-GPU node), 8, 3 and 3 GPUs: the four others fit nowhere.
    `per_job`: the diagnosis asked for every job, as before shapes were remembered."""
    diagnose = scheduler_module.why_no_node_fits
    calls = []

    def counted(*args: Any) -> str:
        calls.append(args)
        return diagnose(*args)

    monkeypatch.setattr(scheduler_module, "why_no_node_fits", counted)
    if per_job:
        monkeypatch.setattr(
            Scheduler, "_no_node_fits", lambda self, spec, state, _known: counted(spec, state)
        )
    cache = ClusterCache(WholeGpu())
    cache.replace(NODES, [node_json("a", 2), node_json("b", 4)])
    sizes = {"h1": 8, "fit": 4, "h2": 8, "m1": 3, "m2": 3}
    pods = [pod_json(name, gpus) for name, gpus in sizes.items()]
    effects = one_round(cache, pods, make_policy("bestfit"), now=1000.0)
    assert [name for name, _node, _notes in effects.binds] == ["fit"]
    return sorted(effects.reports), len(calls)


def test_jobs_waiting_alike_are_diagnosed_once_with_the_same_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per job: 4 diagnoses. By shape: h1 (8 GPUs), then, the placement of `fit` having
    changed the cluster, h2 again, and m1 once for m1 and m2: 3. The reports are the
    same, and say what changed: the 3-GPU pods found the 4-GPU node taken."""
    with monkeypatch.context() as patch:
        expected, each = reports_and_diagnoses(patch, per_job=True)
    reports, shaped = reports_and_diagnoses(monkeypatch, per_job=False)
    assert (each, shaped) == (4, 3)
    assert reports == expected
    assert dict(reports)["m1"] == "bestfit: 0/2 nodes are available: 2 insufficient GPUs"
