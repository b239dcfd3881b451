"""deploy/grafana/gpufleet.json reads only what the controller exports: every metric a
panel's query names is among the samples a replica's registry serves (scheduler, cluster,
leader, quarantine, CTJ, shadow and forecast-score collectors all fed), and the cluster
collector's allocation per GPU model, a CTJ's accuracy and the forecast error are checked
by hand."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.ctj.crd import ctj_from_json
from controller.devcluster.fleet import node_manifest
from controller.kube.objects import Problem
from controller.metrics import ControllerMetrics
from controller.scheduling.cache import NODES, PODS, ClusterCache
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.quarantine import Quarantine
from controller.scheduling.scheduler import Scheduler
from controller.shadow.metrics import ShadowCollector
from controller.shadow.runner import ShadowOptions, ShadowRunner
from policies import NodeSpec, make_policy
from policies.continual import AccuracyCurve
from tests.conftest import accuracy_json, ctj_metadata
from traces.forecast_score import SCORE_COLUMNS

DASHBOARD = Path(__file__).parents[1] / "deploy" / "grafana" / "gpufleet.json"
METRIC = re.compile(r"\bgpufleet_[a-z_]+")
CREATED = 1_700_000_040.0
HALVING = AccuracyCurve(0.9, 0.5, decay_per_h=3600 * math.log(2) / 600, half_gain_gpu_s=60.0)
"""The distance to the floor halves every 600 s."""
SCORE = f"""{",".join(SCORE_COLUMNS)}
declared,200,4.2,9.5,180,6.1,12.0
default,3,30.0,55.5,0,,
"""


def stream_ctj() -> dict[str, Any]:
    """Serving 0.9 from its creation; its evaluation measured 0.8 at +600 s."""
    return {
        "metadata": ctj_metadata("stream", now_rfc3339(CREATED), "default"),
        "spec": {
            "image": "r:1",
            "retrain": {
                "windowSeconds": 3600,
                "deadlineSeconds": 600,
                "configs": [{"name": "small", "workGpuSeconds": 60.0, "quality": 1.0}],
            },
            "resources": {"gpu": {"count": 1}},
            "accuracy": accuracy_json(HALVING, 0.9),
        },
        "status": {"observedAccuracy": {"value": 0.8, "time": now_rfc3339(CREATED + 600)}},
    }


def pod(name: str, gpus: int, node: str = "") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {},
        },
        "spec": {
            "schedulerName": "gpufleet",
            "nodeName": node,
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running" if node else "Pending"},
    }


def served(score: Path) -> dict[str, float]:
    """Every sample of a replica's registry with each collector fed, the CTJs' scraped
    1,200 s after their creation: sample name → value (summed over labels)."""
    cache = ClusterCache(WholeGpu())
    cache.replace(
        NODES,
        [
            node_manifest(NodeSpec("a", 8000, 32_000, 4, "A100")),
            node_manifest(NodeSpec("v", 8000, 32_000, 2, "V100")),
        ],
    )
    cache.replace(PODS, [pod("p1", 3, "a"), pod("p2", 1, "v"), pod("w", 2)])
    scheduler = Scheduler(make_policy("bestfit"), cache, effects=None)  # type: ignore[arg-type]
    metrics = ControllerMetrics()
    metrics.watch_scheduler(scheduler)
    metrics.watch_leader("replica-0", lambda: True)
    quarantine = Quarantine()
    quarantine.reject("Pod", "default/bad", "uid-bad", Problem("metadata.annotations", "no"))
    metrics.watch_quarantine(quarantine)
    ctj = ctj_from_json({"metadata": {"name": "s", "namespace": "default"}, "spec": {}})
    metrics.watch_ctjs(lambda: [ctj, ctj_from_json(stream_ctj())], lambda: CREATED + 1200)
    score.write_text(SCORE)
    metrics.watch_forecast_score(score.parent)
    metrics.reconciles.labels("ok").inc()
    metrics.pass_seconds.observe(0.01)
    metrics.pod_seconds.observe(0.1)
    runner = ShadowRunner(ShadowOptions((make_policy("fgd"),)), "bestfit")
    metrics.registry.register(ShadowCollector(runner))
    text = generate_latest(metrics.registry).decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (
                f"{sample.name}{{{','.join(f'{k}={v}' for k, v in sorted(sample.labels.items()))}}}"
            )
            samples[key] = sample.value
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    return served(tmp_path_factory.mktemp("score") / "score.csv")


def panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def test_every_panel_queries_only_exported_metrics(samples: dict[str, float]) -> None:
    assert panels()
    for panel in panels():
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            names = METRIC.findall(expr)
            assert names, f"panel {panel['title']!r}: {expr!r} names no gpufleet metric"
            for name in names:
                assert name in samples, f"panel {panel['title']!r}: {name} is not exported"


def test_the_dashboard_covers_what_operators_read() -> None:
    named = {n for p in panels() for t in p["targets"] for n in METRIC.findall(t["expr"])}
    for needed in (
        "gpufleet_bindings_total",
        "gpufleet_pod_scheduling_duration_seconds_bucket",
        "gpufleet_pending_pods",
        "gpufleet_allocated_gpus",
        "gpufleet_fragmentation_percent",
        "gpufleet_rejected_objects_total",
        "gpufleet_ctj_deadline_misses_total",
        "gpufleet_ctj_accuracy",
        "gpufleet_forecast_error_seconds",
        "gpufleet_shadow_differing_decisions_total",
    ):
        assert needed in named, needed


def test_allocation_and_fragmentation_per_model_by_hand(samples: dict[str, float]) -> None:
    """A100 node: 4 GPUs, 3 held by p1; V100 node: 2 GPUs, 1 held by p2; w waits for 2.
    The workload is one task each of 3, 1 and 2 GPUs (1/3 each). On each node one GPU
    is free, which the 3- and 2-GPU tasks cannot use: 2/3 of a GPU is fragmented, 16.7%
    of the A100s' 4 GPUs and 33.3% of the V100s' 2."""
    assert samples["gpufleet_gpus{model=A100}"] == 4.0
    assert samples["gpufleet_allocated_gpus{model=A100}"] == 3.0
    assert samples["gpufleet_gpus{model=V100}"] == 2.0
    assert samples["gpufleet_allocated_gpus{model=V100}"] == 1.0
    assert samples["gpufleet_fragmentation_percent{model=A100}"] == pytest.approx(100 / 6)
    assert samples["gpufleet_fragmentation_percent{model=V100}"] == pytest.approx(100 / 3)


def test_ctj_accuracy_by_source_by_hand(samples: dict[str, float]) -> None:
    """Observed 0.8 at +600 s; along the curve the distance to the floor 0.5 halves by
    +1,200 s: 0.5 + 0.3 / 2. The unreadable CTJ has no accuracy."""
    labels = "name=stream,namespace=default,source="
    assert samples[f"gpufleet_ctj_accuracy{{{labels}observed}}"] == 0.8
    assert samples[f"gpufleet_ctj_accuracy{{{labels}curve}}"] == pytest.approx(0.65)
    assert samples["gpufleet_ctj_accuracy"] == pytest.approx(0.8 + 0.65)


def test_forecast_error_from_the_score_table(samples: dict[str, float]) -> None:
    """Each non-empty cell of score.csv is one sample; an empty one none."""
    error = "gpufleet_forecast_error_seconds"
    assert samples[f"{error}{{quantity=start,source=declared,stat=p90}}"] == 9.5
    assert samples[f"{error}{{quantity=finish,source=declared,stat=mean}}"] == 6.1
    assert samples[f"{error}{{quantity=start,source=default,stat=mean}}"] == 30.0
    assert f"{error}{{quantity=finish,source=default,stat=mean}}" not in samples
    assert samples["gpufleet_forecast_scored_jobs{quantity=finish,source=default}"] == 0.0


def test_a_malformed_score_table_exports_nothing_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    score = tmp_path / "score.csv"
    score.write_text(SCORE.replace("4.2", "soon"))
    metrics = ControllerMetrics()
    metrics.watch_forecast_score(score)
    text = generate_latest(metrics.registry).decode()
    assert "gpufleet_forecast_error_seconds{" not in text
    assert "score.csv:2: field 'start_mean_abs_err_s'" in caplog.text


def test_a_score_directory_written_after_the_start_is_exported(tmp_path: Path) -> None:
    later = tmp_path / "score"
    metrics = ControllerMetrics()
    metrics.watch_forecast_score(later)
    assert "gpufleet_forecast_error_seconds{" not in generate_latest(metrics.registry).decode()
    later.mkdir()
    (later / "score.csv").write_text(SCORE)
    assert 'source="declared",stat="p90"} 9.5' in generate_latest(metrics.registry).decode()
