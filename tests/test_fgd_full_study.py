"""The FGD study's comparison with the artifact: its runs read per seed, and the interval
of the difference of means that says whether a gap is more than seed noise."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
from scipy import stats

STUDY = Path(__file__).parents[1] / "benchmarks" / "fgd_full_study.py"


@pytest.fixture(scope="module")
def study() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fgd_full_study", STUDY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_upstream_runs_are_unallocated_gpus_per_seed(study: ModuleType, tmp_path: Path) -> None:
    # 95% of 6,212 GPUs allocated at 100% arrived leaves 310.6; 96% leaves 248.48.
    path = tmp_path / "analysis_allo_discrete.csv"
    path.write_text(
        "workload,sc_policy,tune,seed,total_gpus,99,100\n"
        "openb_pod_list_cpu100,06-FGD,1.3,42,6212,94.0,95.0\n"
        "openb_pod_list_cpu100,06-FGD,1.3,43,6212,95.5,96.0\n"
        "openb_pod_list_cpu100,05-BestFit,1.3,42,6212,90.0,91.0\n"
    )
    runs = study.upstream_runs(path)
    assert runs[("cpu100", "fgd")] == pytest.approx([310.6, 248.48])
    assert runs[("cpu100", "bestfit")] == pytest.approx([6212 * 0.09])


def test_difference_interval_is_welchs(study: ModuleType) -> None:
    # ours: mean 4, variance 4; theirs: mean 2, variance 1; three seeds each.
    # Standard error² = 4/3 + 1/3 = 5/3; Welch's degrees of freedom
    # (5/3)² / ((4/3)²/2 + (1/3)²/2) = 50/17 (not the pooled test's 4).
    difference, low, high = study.difference_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half_width = stats.t.ppf(0.975, 50 / 17) * math.sqrt(5 / 3)
    assert difference == pytest.approx(2.0)
    assert (low, high) == pytest.approx((2.0 - half_width, 2.0 + half_width))
    assert low < 0 < high  # a gap of 2 is within the noise of three seeds this spread


def test_a_gap_far_beyond_the_spread_excludes_zero(study: ModuleType) -> None:
    _, low, high = study.difference_interval([10.0, 10.5, 11.0], [1.0, 1.5, 2.0])
    assert 0 < low < 9 < high
