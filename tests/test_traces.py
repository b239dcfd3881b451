"""Trace readers: valid files load, malformed ones stop with file, line and field."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from policies import FixedDuration, ModelThroughput
from tests.conftest import shared_data
from traces import TraceError, canonical, gavel, load_jobs, load_nodes, openb, philly
from traces.synthetic import SyntheticSpec, default_cluster, generate_jobs, homogeneous_cluster


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


OPENB_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time"
)
OPENB_PODS = f"""{OPENB_HEADER}
p0,4000,8192,1,500,,LS,Running,10,110,10
p1,12000,16384,2,1000,V100M16|V100M32|V100M16,BE,Running,20,420,20
p2,2000,1024,0,0,,BE,Running,30,31,30
"""


def test_openb_pods_become_replay_jobs(tmp_path: Path) -> None:
    jobs = load_jobs(write(tmp_path, "pods.csv", OPENB_PODS), "openb")
    assert [j.id for j in jobs] == ["p0", "p1", "p2"]
    assert jobs[0].task.is_sharing and jobs[0].task.gpu_milli == 500
    assert jobs[1].allowed_models == frozenset({"V100M16", "V100M32"})
    assert isinstance(jobs[1].work, FixedDuration) and jobs[1].work.seconds == 400
    assert jobs[2].task.num_gpus == 0 and jobs[2].submit_time == 30


def test_openb_nodes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nodes.csv",
        "sn,cpu_milli,memory_mib,gpu,model\na,64000,1000,2,P100\nb,32000,1000,0,\n",
    )
    assert [(n.name, n.gpus, n.gpu_model) for n in load_nodes(path)] == [
        ("a", 2, "P100"),
        ("b", 0, ""),
    ]
    assert [n.name for n in openb.read_nodes(path, gpu_only=True)] == ["a"]


@pytest.mark.parametrize(
    ("row", "line", "field"),
    [
        ("p9,4000,8192,1,1500,,LS,Running,1,2,1", 3, "gpu_milli"),
        ("p9,4000,8192,2,500,,LS,Running,1,2,1", 3, "gpu_milli"),
        ("p9,abc,8192,1,500,,LS,Running,1,2,1", 3, "cpu_milli"),
        ("p9,4000,-5,1,500,,LS,Running,1,2,1", 3, "memory_mib"),
        ("p9,4000,8192,1,500", 3, None),
    ],
)
def test_openb_bad_rows_name_line_and_field(
    tmp_path: Path, row: str, line: int, field: str | None
) -> None:
    header, first = OPENB_PODS.splitlines()[:2]
    path = write(tmp_path, "bad.csv", f"{header}\n{first}\n{row}\n")
    with pytest.raises(TraceError, match=f"^{re.escape(str(path))}:{line}: ") as info:
        load_jobs(path, "openb")
    assert info.value.line == line
    if field:
        assert info.value.field == field


def test_missing_columns_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="header lacks column"):
        load_jobs(write(tmp_path, "h.csv", "name,cpu_milli\nx,1\n"), "openb")
    with pytest.raises(TraceError, match="empty"):
        load_jobs(write(tmp_path, "e.csv", ""), "philly")
    with pytest.raises(TraceError, match="no jobs"):
        load_jobs(write(tmp_path, "n.csv", "timestamp,duration,num_gpus\n"), "philly")
    with pytest.raises(TraceError, match="unknown format"):
        load_jobs(write(tmp_path, "x.csv", "a\n"), "nope")


def test_a_trace_read_as_another_format_names_its_own(tmp_path: Path) -> None:
    """An openb pod list read as canonical or philly: the error names the missing
    columns and the format the header is; a header of no format gets no guess."""
    pods = write(tmp_path, "pods.csv", OPENB_PODS)
    for fmt in ("canonical", "philly"):
        with pytest.raises(
            TraceError, match="the header is the openb format's: give --format openb"
        ):
            load_jobs(pods, fmt)
    sia = write(tmp_path, "w.csv", "name,time,application,num_replicas,batch_size\n")
    with pytest.raises(TraceError, match=r"give --format sia$"):
        load_jobs(sia, "gavel")
    with pytest.raises(TraceError, match=r"header lacks column\(s\) id, submit_s$"):
        load_jobs(write(tmp_path, "x.csv", "num_gpus,other\n1,2\n"), "canonical")


def test_philly_timestamps_and_wide_jobs(tmp_path: Path) -> None:
    text = (
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-09 07:01:55,66.0,1,66.0,a\n"
        "2017-10-09 06:13:03,2951.0,12,1.0,b\n"
        "\n"
        "2017-10-09 06:13:13,10,16,1,c\n"
    )
    jobs = philly.read_jobs(write(tmp_path, "philly.csv", text))
    assert [j.submit_time for j in jobs] == [0.0, 10.0, 2932.0]
    twelve = jobs[0]
    assert (twelve.replicas, twelve.task.num_gpus) == (3, 4)
    assert (jobs[1].replicas, jobs[1].task.num_gpus) == (2, 8)


def test_philly_rejects_bad_values(tmp_path: Path) -> None:
    bad_time = write(tmp_path, "t.csv", "timestamp,duration,num_gpus\nyesterday,1,1\n")
    with pytest.raises(TraceError, match="timestamp"):
        philly.read_jobs(bad_time)
    zero = write(tmp_path, "z.csv", "timestamp,duration,num_gpus\n0,0,1\n")
    with pytest.raises(TraceError, match=r"z.csv:2: field 'duration'"):
        philly.read_jobs(zero)


def test_gavel_distribution_sampling_is_seeded(tmp_path: Path) -> None:
    path = write(tmp_path, "g.csv", "duration_s,num_gpus\n3600,1\n7200,4\n")
    a = gavel.read_jobs(path, num_jobs=50, jobs_per_hour=10, seed=3)
    b = gavel.read_jobs(path, num_jobs=50, jobs_per_hour=10, seed=3)
    assert [(j.submit_time, j.gpus) for j in a] == [(j.submit_time, j.gpus) for j in b]
    assert {j.gpus for j in a} == {1, 4}
    assert a[0].submit_time == 0.0
    with pytest.raises(TraceError, match="num_gpus"):
        gavel.read_distribution(write(tmp_path, "bad.csv", "duration_s,num_gpus\n10,0\n"))


def test_canonical_round_trip(tmp_path: Path) -> None:
    jobs = generate_jobs(SyntheticSpec(num_jobs=40), seed=5)
    path = tmp_path / "jobs.csv"
    assert canonical.write_jobs(jobs, path) == 40
    again = load_jobs(path, "canonical")
    assert again == jobs
    assert isinstance(again[0].work, ModelThroughput)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("a,0,batch,1,0,0,1,1000,,0,,,100,,", "throughput"),
        ("a,0,batch,1,0,0,1,1000,,0,,,100,V100=fast,", "throughput"),
        ("a,0,batch,1,0,0,2,500,,0,,100,,,", "gpu_milli"),
        ("a,x,batch,1,0,0,1,1000,,0,,100,,,", "submit_s"),
        ("a,0,batch,0,0,0,1,1000,,0,,100,,,", "replicas"),
        ("a,0,batch,1,0,0,1,1000,,0,,100,,,no", "preemptible"),
    ],
)
def test_canonical_bad_rows(tmp_path: Path, row: str, field: str) -> None:
    path = write(tmp_path, "c.csv", ",".join(canonical.JOB_COLUMNS) + "\n" + row + "\n")
    with pytest.raises(TraceError, match=f":2: field '{field}'") as info:
        load_jobs(path)
    assert (info.value.line, info.value.field) == (2, field)


def test_canonical_duplicate_ids(tmp_path: Path) -> None:
    row = "a,0,batch,1,0,0,1,1000,,0,,100,,,"
    path = write(tmp_path, "d.csv", ",".join(canonical.JOB_COLUMNS) + f"\n{row}\n{row}\n")
    with pytest.raises(TraceError, match="duplicate"):
        load_jobs(path)


def test_canonical_preemptible_round_trips_and_defaults_to_true(tmp_path: Path) -> None:
    jobs = generate_jobs(SyntheticSpec(num_jobs=4), seed=5)
    jobs[1] = dataclasses.replace(jobs[1], preemptible=False)
    canonical.write_jobs(jobs, tmp_path / "jobs.csv")
    assert [j.preemptible for j in load_jobs(tmp_path / "jobs.csv", "canonical")] == [
        True,
        False,
        True,
        True,
    ]
    # An older file without the column: every job may be preempted.
    path = write(tmp_path, "old.csv", "id,submit_s,num_gpus,duration_s\na,0,1,100\n")
    assert load_jobs(path, "canonical")[0].preemptible is True


def test_canonical_nodes_round_trip(tmp_path: Path) -> None:
    nodes = default_cluster()
    canonical.write_nodes(nodes, tmp_path / "n.csv")
    assert load_nodes(tmp_path / "n.csv") == nodes


def test_synthetic_generator_follows_the_gavel_mixture() -> None:
    jobs = generate_jobs(SyntheticSpec(num_jobs=4000, sharing_fraction=0.0), seed=1)
    sizes = [j.gpus for j in jobs]
    assert abs(sizes.count(1) / 4000 - 0.7) < 0.03
    assert abs(sizes.count(8) / 4000 - 0.05) < 0.015
    fastest = [j.work.total for j in jobs]
    assert min(fastest) >= 60 * 10**1.5 and max(fastest) <= 60 * 10**4
    assert generate_jobs(SyntheticSpec(num_jobs=10), 2) == generate_jobs(
        SyntheticSpec(num_jobs=10), 2
    )


def test_homogeneous_cluster_shapes() -> None:
    nodes = homogeneous_cluster(20)
    assert [n.gpus for n in nodes] == [8, 8, 4]
    with pytest.raises(ValueError, match="a cluster needs at least one GPU"):
        homogeneous_cluster(0)


@pytest.mark.shared_data
def test_public_openb_default_integrity() -> None:
    pods = list(openb.read_pods(shared_data("alibaba-gpu-2023/openb_pod_list_default.csv")))
    assert len(pods) == 8152
    assert sum(p.task.gpu_total_milli for p in pods) == 6_086_800
    nodes = openb.read_nodes(shared_data("alibaba-gpu-2023/openb_node_list_gpu_node.csv"))
    assert (len(nodes), sum(n.gpus for n in nodes)) == (1213, 6212)


@pytest.mark.shared_data
def test_public_philly_and_gavel_integrity() -> None:
    jobs = philly.read_jobs(shared_data("sia/traces/philly.csv"))
    assert len(jobs) == 82_247
    table = gavel.read_distribution(shared_data("gavel/philly_job_distribution.csv"))
    assert len(table) == 33_192
