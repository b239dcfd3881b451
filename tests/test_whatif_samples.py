"""Samples that drew the same durations share one simulation, unless the policy drew
random numbers in it; either way every sample's run is the one simulating it gives."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

import simulator.whatif.forecast as forecast
from simulator.whatif.forecast import PolicySpec, SampleRun, plan_forecast, run_samples
from traces.snapshot import ClusterSnapshot, SnapHistory, SnapNode, SnapPending

NODES = tuple(SnapNode(f"n{i}", 8000, 32_000, 2, "A100") for i in range(2))


def two_way_snapshot() -> ClusterSnapshot:
    """One job of unknown runtime whose shape finished in 100 s or 300 s before: each
    sample draws one of two durations. Four fixed jobs queue with it."""
    known = tuple(
        SnapPending(f"k{i}", 10.0 - i, 1000, 1000, 1, 1000, runtime_s=50.0 * (i + 1))
        for i in range(4)
    )
    drawn = SnapPending("drawn", 20.0, 1000, 1000, 2, 1000)
    history = (SnapHistory(1, 2, 1000, 100.0), SnapHistory(1, 2, 1000, 300.0))
    return ClusterSnapshot(0.0, NODES, pending=(drawn, *known), history=history)


def same(a: SampleRun, b: SampleRun) -> bool:
    return all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(astuple(a), astuple(b), strict=True)
    )


@pytest.mark.parametrize(("policy", "shared"), [("bestfit", True), ("random", False)])
def test_samples_with_equal_durations_share_a_simulation_only_without_random_draws(
    monkeypatch: pytest.MonkeyPatch, policy: str, shared: bool
) -> None:
    plan = plan_forecast(two_way_snapshot(), 1e4)
    samples = 8
    groups = forecast.same_durations(plan, samples, seed=3)
    assert len(groups) == 2 and sum(map(len, groups)) == samples  # both draws occur
    spec = PolicySpec(policy, {})
    direct = [forecast.run_sample(plan, spec, s, 3) for s in range(samples)]
    simulated: list[int] = []
    real = forecast.run_sample

    def counted(plan: forecast.Plan, spec: PolicySpec, sample: int, seed: int) -> SampleRun:
        simulated.append(sample)
        return real(plan, spec, sample, seed)

    monkeypatch.setattr(forecast, "run_sample", counted)
    covered: list[int] = []
    runs = run_samples(plan, [spec], samples, seed=3, workers=1, progress=covered.append)
    assert sorted(simulated) == ([g[0] for g in groups] if shared else list(range(samples)))
    assert [r.sample for r in runs] == list(range(samples))
    assert all(same(run, d) for run, d in zip(runs, direct, strict=True))
    assert covered[-1] == samples
