"""`replicas.min` above 1 is an elastic lower bound: a window never runs on fewer GPUs,
starts at its minimum when only that much is free and grows to its maximum, in the
simulator (`StreamSpec.min_gpus`) and through the controller's scheduler (a CTJ with
`replicas: {min: 2, max: 4}`).

Hand-worked, one node of 4 A100s; ceiling 0.9, floor 0.3, no decay, h = 50, one config
of 200 reference-GPU-seconds; speed-up 1.8 on 2 GPUs and 3.24 on 4 (0.9 per doubling);
the window opens at 1 s (deadline 251 s, end 301 s), restart cost 10 s, rounds every 2 s.
Batch jobs hold 3 GPUs from 0 (`two`: 2 GPUs to 39 s, `one`: 1 GPU to 19 s); a CPU-only
`probe` arrives at 41 s (an arrival makes the next round re-plan running windows).

* min 2 under `thief` and `edf`: with 1 GPU free the window waits; the round at 20 s
  starts it on 2 GPUs; the round at 42 s moves it to 4 (done 22·1.8 = 39.6, so 160.4
  left: 42 + 10 + 160.4/3.24 = 101.506 s against 42 + 160.4/1.8 = 131.1 s if kept).
  GPU-seconds 2·22 + 4·59.506 = 282.02.
* min 1 (the control): it starts at 2 s on the one free GPU, keeps it to 42 s (rounds
  between arrivals do not enlarge running windows) and then moves to 4:
  42 + 10 + 160/3.24 = 101.383 s.
* `fairshare` with min 2: it starts on 2 GPUs at 20 s and keeps them (4 is within a
  factor of two of fair): 20 + 200/1.8 = 131.11 s.
* `fifo` (an ordinary policy) places the window as a gang of its minimum, 2 pods, when
  `one` ends at 19 s: 19 + 200/1.8 = 130.11 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import FixedDuration, JobSpec, NodeSpec, TaskRequest, make_policy
from policies.continual import AccuracyCurve, RetrainConfig, StreamSpec
from simulator.continual import STREAM_COLUMNS, ContinualRun
from traces.continual import read_streams, write_streams

CURVE = AccuracyCurve(ceiling=0.9, floor=0.3, decay_per_h=0.0, half_gain_gpu_s=50.0)
CONFIG = RetrainConfig("only", work_gpu_s=200.0)
NODE = NodeSpec("a", 32_000, 131_072, 4, "A100")
ROUND_S = 2.0


def stream(min_gpus: int) -> StreamSpec:
    return StreamSpec(
        id="s",
        start_s=1.0,
        window_s=300.0,
        windows=1,
        deadline_s=250.0,
        task=TaskRequest(1000, 1024, 1, 1000),
        throughput={"A100": 1.0},
        curve=CURVE,
        configs=(CONFIG,),
        initial_accuracy=0.5,
        max_gpus=4,
        min_gpus=min_gpus,
    )


def batch(job_id: str, gpus: int, runtime_s: float, submit: float = 0.0) -> JobSpec:
    task = TaskRequest(1000, 1024, 1, 1000) if gpus else TaskRequest(1000, 1024)
    return JobSpec(job_id, submit, task, FixedDuration(runtime_s), replicas=max(gpus, 1))


def window_row(policy: str, min_gpus: int) -> dict[str, object]:
    """The window's record after a run with 3 of the 4 GPUs held at its opening."""
    jobs = [batch("two", 2, 39.0), batch("one", 1, 19.0), batch("probe", 0, 1.0, submit=41.0)]
    options = {"realloc_s": ROUND_S} if policy != "fifo" else {}
    run = ContinualRun([NODE], [stream(min_gpus)], make_policy(policy, options), batch_jobs=jobs)
    run.run()
    (row,) = run.rows
    return dict(zip(STREAM_COLUMNS, row, strict=True))


def outcome(row: dict[str, object]) -> tuple[object, ...]:
    return row["status"], row["end_s"], row["gpu_s"], row["restarts"], row["replicas"]


@pytest.mark.parametrize("policy", ["thief", "edf"])
def test_a_window_of_min_2_waits_on_1_gpu_starts_on_2_and_grows_to_4(policy: str) -> None:
    end = 42 + 10 + (200 - 22 * 1.8) / 3.24
    expected = ("completed", pytest.approx(end), pytest.approx(2 * 22 + 4 * (end - 42)), 1, 4)
    assert outcome(window_row(policy, 2)) == expected


@pytest.mark.parametrize("policy", ["thief", "edf"])
def test_a_window_of_min_1_starts_on_the_one_free_gpu(policy: str) -> None:
    end = 42 + 10 + (200 - 40 * 1.0) / 3.24
    expected = ("completed", pytest.approx(end), pytest.approx(40 + 4 * (end - 42)), 1, 4)
    assert outcome(window_row(policy, 1)) == expected


def test_fairshare_starts_a_window_of_min_2_on_2_gpus() -> None:
    expected = ("completed", pytest.approx(20 + 200 / 1.8), pytest.approx(200 / 1.8 * 2), 0, 2)
    assert outcome(window_row("fairshare", 2)) == expected


def test_an_ordinary_policy_places_the_minimum_as_a_gang() -> None:
    expected = ("completed", pytest.approx(19 + 200 / 1.8), pytest.approx(200 / 1.8 * 2), 0, 2)
    assert outcome(window_row("fifo", 2)) == expected


def test_a_window_job_has_min_replicas_and_elastic_bounds() -> None:
    job = stream(2).window_job(0, 0, 0.5)
    assert job.replicas == 2
    assert job.elastic is not None
    assert (job.elastic.min_replicas, job.elastic.max_replicas) == (2, 4)


@pytest.mark.parametrize(
    ("milli", "min_gpus", "max_gpus", "message"),
    [
        (500, 2, 4, "min_gpus above 1 needs whole GPUs"),
        (1000, 3, 2, "1 <= min_gpus <= max_gpus"),
        (1000, 0, 2, "1 <= min_gpus <= max_gpus"),
    ],
)
def test_a_stream_refuses_bounds_it_cannot_honour(
    milli: int, min_gpus: int, max_gpus: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StreamSpec(
            id="bad",
            start_s=0.0,
            window_s=300.0,
            windows=1,
            deadline_s=250.0,
            task=TaskRequest(1000, 1024, 1, milli),
            throughput={"A100": 1.0},
            curve=CURVE,
            configs=(CONFIG,),
            max_gpus=max_gpus,
            min_gpus=min_gpus,
        )


def test_a_streams_file_keeps_min_gpus(tmp_path: Path) -> None:
    path = tmp_path / "streams.csv"
    write_streams([stream(2)], path)
    (read,) = read_streams(path)
    assert (read.min_gpus, read.max_gpus) == (2, 4)
