"""The shadow policies' Prometheus metrics, read from the runner at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controller.shadow.runner import ShadowRunner

SHADOW_METRICS = (
    "gpufleet_shadow_evaluations",
    "gpufleet_shadow_decisions",
    "gpufleet_shadow_differing_decisions",
    "gpufleet_shadow_errors",
    "gpufleet_shadow_fragmentation_percent",
    "gpufleet_shadow_waiting_jobs",
    "gpufleet_shadow_queueing_delay_seconds",
    "gpufleet_shadow_snapshots_offered",
    "gpufleet_shadow_snapshots_dropped",
)
"""Every metric family this collector yields (counters gain `_total` when exposed)."""


class ShadowCollector:
    def __init__(self, runner: ShadowRunner) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        label = ["policy"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "evaluations": CounterMetricFamily(
                "gpufleet_shadow_evaluations",
                "Live snapshots a shadow policy decided on",
                labels=label,
            ),
            "decisions": CounterMetricFamily(
                "gpufleet_shadow_decisions",
                "Jobs a shadow policy or the live one decided on (placed, preempted, resized)",
                labels=label,
            ),
            "differing": CounterMetricFamily(
                "gpufleet_shadow_differing_decisions",
                "Jobs a shadow policy told otherwise than the live policy did",
                labels=label,
            ),
            "errors": CounterMetricFamily(
                "gpufleet_shadow_errors",
                "Live snapshots a shadow policy lost to an error: it raised, the snapshot "
                "could not be sent to it, or its verdict could not be logged",
                labels=label,
            ),
            "fragmentation_pct": GaugeMetricFamily(
                "gpufleet_shadow_fragmentation_percent",
                "Fragmentation (% of GPU capacity) after the shadow's placements, last snapshot",
                labels=label,
            ),
            "waiting": GaugeMetricFamily(
                "gpufleet_shadow_waiting_jobs",
                "Pending jobs the shadow would leave waiting, last snapshot",
                labels=label,
            ),
            "queueing_delay_s": GaugeMetricFamily(
                "gpufleet_shadow_queueing_delay_seconds",
                "Mean wait so far of the jobs the shadow would leave waiting, last snapshot",
                labels=label,
            ),
        }
        for name, stats in self.runner.stats.items():
            for key, family in families.items():
                family.add_metric([name], float(getattr(stats, key)))
        yield from families.values()
        offered = CounterMetricFamily(
            "gpufleet_shadow_snapshots_offered", "Live snapshots handed to the shadow policies"
        )
        offered.add_metric([], self.runner.offered)
        yield offered
        dropped = CounterMetricFamily(
            "gpufleet_shadow_snapshots_dropped",
            "Live snapshots the shadow policies skipped because they were still busy",
        )
        dropped.add_metric([], self.runner.dropped)
        yield dropped
