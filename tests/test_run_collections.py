"""`simulator.run.fewer_collections`: the collector's thresholds are raised inside the
block and come back afterwards, also when the block raises."""

from __future__ import annotations

import gc

import pytest

from simulator.run import GC_YOUNG_THRESHOLD, fewer_collections


def test_thresholds_are_raised_inside_and_restored_after() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


def test_thresholds_are_restored_when_the_run_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("a policy bug")
    assert gc.get_threshold() == before
