"""`gpufleet experiment fgd-inflation` end to end on an invented trace, its bad-input
handling, the workload inflation, and the paper's ordering on one seed of openb."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gpufleet.cli import main
from policies import ClusterState, Context, JobStatus, JobView, Place, Snapshot, make_policy
from policies.target_workload import TargetWorkload, TaskType
from simulator.experiments.fgd_inflation import (
    CURVE_COLUMNS,
    FAILURE_COLUMNS,
    Trace,
    artifact_node_order,
    inflated_order,
    load_trace,
    parse_seeds,
    run_inflation,
)
from simulator.results import load_experiment
from tests.conftest import job, node, shared_data
from traces.openb import read_nodes

UNALLOCATED = CURVE_COLUMNS.index("unallocated_gpus")

NODES = """sn,cpu_milli,memory_mib,gpu,model
node-b,32000,131072,4,V100M16
node-a,64000,262144,8,G2
node-c,16000,65536,2,T4
"""
PODS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec
p0,4000,8192,1,500,
p1,8000,16384,1,1000,
p2,2000,4096,0,0,
p3,16000,32768,2,1000,
p4,4000,8192,1,300,T4
p5,6000,8192,1,1000,G2|V100M16
"""


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODES)
    pods = tmp_path / "openb_pod_list_tiny.csv"
    pods.write_text(PODS)
    return pods, nodes


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_curves_failures_summary_and_plots(inputs, tmp_path: Path) -> None:
    pods, nodes = inputs
    out = tmp_path / "out"
    argv = ["experiment", "fgd-inflation", "--pods", str(pods), "--nodes", str(nodes)]
    argv += ["--policies", "fgd,bestfit,random", "--seeds", "1-2", "--out", str(out)]
    assert main([*argv, "--workers", "2"]) == 0
    with (out / "curves.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == CURVE_COLUMNS
    rows = read_csv(out / "curves.csv")
    assert len(rows) == 3 * 2 * 131  # policies × seeds × percents 0..130
    for group in group_rows(rows).values():
        assert [int(r["arrived_pct"]) for r in group] == list(range(131))
        alloc = [float(r["alloc_pct"]) for r in group]
        assert alloc[0] == 0 and alloc == sorted(alloc) and alloc[-1] <= 100
        for r in group:  # 14 GPUs in all
            assert float(r["unallocated_gpus"]) == pytest.approx(
                14 * (1 - float(r["alloc_pct"]) / 100), abs=1e-2
            )
    with (out / "failures.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == FAILURE_COLUMNS
    assert {r["policy"] for r in read_csv(out / "summary.csv")} == {"fgd", "bestfit", "random"}
    assert (out / "plots" / "tiny.png").stat().st_size > 1000


def group_rows(rows: list[dict[str, str]]) -> dict[tuple[str, str], list[dict[str, str]]]:
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["seed"]), []).append(r)
    return groups


def test_runs_are_reproducible_and_policies_see_the_same_workload(inputs, tmp_path) -> None:
    pods, nodes = inputs
    trace = load_trace(pods)
    node_list = read_nodes(nodes, gpu_only=True)
    first = run_inflation(trace, node_list, "random", 7, 1.3)
    again = run_inflation(trace, node_list, "random", 7, 1.3)
    assert first.curve == again.curve and first.failures == again.failures
    # The workload stream does not depend on the policy: arrivals line up row for row.
    capacity = 14_000
    order = inflated_order(trace, capacity, 1.3, np.random.default_rng(3))
    assert order == inflated_order(trace, capacity, 1.3, np.random.default_rng(3))


def test_nodes_are_renamed_in_a_seeded_random_order_as_the_artifact_does(inputs) -> None:
    # The artifact (simulator.go, syncClusterResourceList) sorts the nodes by name and
    # renames the i-th to "%04d-<name>" with perm[i] from rand.Perm, so its first-name
    # tie-break follows a random node order drawn per seed, not the node list's.
    _, nodes = inputs
    node_list = read_nodes(nodes, gpu_only=True)  # node-b, node-a, node-c
    orders = {
        seed: [n.name for n in artifact_node_order(node_list, np.random.default_rng(seed))]
        for seed in range(8)
    }
    for names in orders.values():
        assert names == sorted(names)  # index order is name order
        assert sorted(n[5:] for n in names) == ["node-a", "node-b", "node-c"]
        assert [n[:5] for n in names] == ["0000-", "0001-", "0002-"]
    assert len({tuple(n[5:] for n in names) for names in orders.values()}) > 1
    assert orders[3] == [n.name for n in artifact_node_order(node_list, np.random.default_rng(3))]


def test_a_tie_goes_to_the_first_node_of_the_seeds_order_not_the_list(tmp_path) -> None:
    # Idle nodes a and b (2 GPUs each) differ only in memory, which Packing does not
    # score: a whole-GPU pod scores max(33 - 2, 2) = 31 on both (gpu_packing_score.go,
    # case 3) and goes to the node whose random prefix sorts first. Pods x (1 GPU, 2 GiB)
    # and y (1 GPU, 4 GiB) arrive in the seed's shuffled order. If x comes first and b
    # ranks first, x takes b's memory and y fits nowhere (a has 2 GiB): 3 GPUs stay
    # unallocated, else 2. With the list's order (a always first) y never failed.
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\na,8000,2048,2,T4\nb,8000,4096,2,T4\n")
    pods = tmp_path / "openb_pod_list_two.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nx,1000,2048,1,1000\ny,1000,4096,1,1000\n"
    )
    trace, node_list = load_trace(pods), read_nodes(nodes, gpu_only=True)
    outcomes = []
    for seed in range(8):
        workload_seed, _, node_seed = np.random.SeedSequence(seed).spawn(3)
        arrivals = inflated_order(trace, 4000, 0.5, np.random.default_rng(workload_seed))
        order = artifact_node_order(node_list, np.random.default_rng(node_seed))
        y_fails = arrivals[0].id == "x" and order[0].name.endswith("-b")
        curve = run_inflation(trace, node_list, "packing", seed, 0.5).curve
        assert curve[-1][UNALLOCATED] == (3.0 if y_fails else 2.0)
        outcomes.append(y_fails)
    assert any(outcomes) and not all(outcomes)


def test_fgd_artifact_cpu_only_tie_follows_the_seeds_node_order() -> None:
    # M = {1 whole GPU + 2 cores}. A 2-core CPU-only task on idle nodes a and b (2 GPUs,
    # 8 cores each) leaves 6 cores, so the GPU type still runs on both: Δ = 0 and
    # int(100σ(0)) = 50 on both (fgd_score.go), a tie the artifact gives to the first
    # name. Its simulator's names are seeded (`%04d-<name>`), so over seeds the task
    # lands on a or b; in the list's order it always took a, the first of the P100
    # nodes on openb, which is how CPU-only tasks stranded their GPUs on cpu200/250.
    workload = TargetWorkload((TaskType(job("g", cpu=2000).task, None, 1.0),))
    policy = make_policy("fgd", {"mode": "artifact", "workload": workload})
    landed = set()
    for seed in range(8):
        nodes = artifact_node_order(
            [node("a", 2, cpu=8000), node("b", 2, cpu=8000)], np.random.default_rng(seed)
        )
        state = ClusterState(nodes)
        pending = [JobView(job("c", gpus=0, cpu=2000), JobStatus.PENDING)]
        (decision,) = policy.schedule(
            Snapshot(state.view(), [], pending, 0.0), Context(np.random.default_rng(0))
        ).decisions
        assert isinstance(decision, Place)
        chosen = decision.placement.tasks[0].node
        assert chosen == nodes[0].name  # the first name of the seed's order
        landed.add(chosen[5:])
    assert landed == {"a", "b"}


def test_inflation_appends_clones_up_to_the_target() -> None:
    jobs = tuple(job(f"p{i}", milli=500) for i in range(4))  # 2 GPUs requested
    order = inflated_order(Trace("t", jobs), 4000, 1.3, np.random.default_rng(0))
    assert sorted(j.id for j in order[:4]) == ["p0", "p1", "p2", "p3"]
    assert all("-tuned-" in j.id for j in order[4:])
    assert sum(j.gpu_milli_total for j in order) == 5000  # 5.2 GPUs is the target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--pods": "missing.csv"}, "no pod list matches"),
        ({"--seeds": "9-1"}, "--seeds"),
        ({"--policies": "fgd,nosuch"}, "unknown policy"),
        ({"--policies": "fgd:mode=fast"}, "mode"),
        ({"--inflate": "0"}, "--inflate"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_output(inputs, tmp_path, capsys, change, message):
    pods, nodes = inputs
    args = {"--pods": str(pods), "--nodes": str(nodes), "--seeds": "1", "--inflate": "1.3"}
    args.update({k: (str(tmp_path / v) if k == "--pods" else v) for k, v in change.items()})
    out = tmp_path / "out"
    argv = ["experiment", "fgd-inflation", "--out", str(out), "--workers", "1", "--no-plots"]
    for key, value in args.items():
        argv += [key, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_pod_row_names_file_and_line(inputs, tmp_path, capsys) -> None:
    pods, nodes = inputs
    pods.write_text(PODS + "p6,1000,100,2,500,\n")
    argv = ["experiment", "fgd-inflation", "--pods", str(pods), "--nodes", str(nodes)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    assert f"{pods}:8" in capsys.readouterr().err


def test_seed_ranges() -> None:
    assert parse_seeds("42-45,50") == [42, 43, 44, 45, 50]


@pytest.mark.shared_data
def test_paper_ordering_on_one_seed_of_the_default_trace() -> None:
    """Inflating only to 100% draws the same shuffle and clones as 130% up to that point,
    so the reading at 100% is the study's, at a quarter less work."""
    trace = load_trace(shared_data("alibaba-gpu-2023/openb_pod_list_default.csv"))
    nodes = read_nodes(shared_data("alibaba-gpu-2023/openb_node_list_gpu_node.csv"), gpu_only=True)
    at_100: dict[str, float] = {}
    for policy in ("random", "packing", "bestfit", "fgd"):
        curve = run_inflation(trace, nodes, policy, 42, 1.0).curve
        at_100[policy] = float(curve[-1][UNALLOCATED])  # type: ignore[arg-type]
    assert at_100["random"] > at_100["packing"] > at_100["bestfit"] > at_100["fgd"]


def test_pods_by_directory_and_glob_cover_several_traces(inputs, tmp_path) -> None:
    _, nodes = inputs
    (tmp_path / "openb_pod_list_other.csv").write_text(PODS)
    for spec in (str(tmp_path), str(tmp_path / "openb_pod_list_*.csv")):
        out = tmp_path / "out"
        argv = ["experiment", "fgd-inflation", "--pods", spec, "--nodes", str(nodes)]
        argv += ["--policies", "bestfit", "--seeds", "1", "--workers", "1", "--no-plots"]
        assert main([*argv, "--out", str(out)]) == 0
        assert {r["trace"] for r in read_csv(out / "curves.csv")} == {"tiny", "other"}


def test_the_experiment_records_its_configuration(inputs, tmp_path: Path) -> None:
    pods, nodes = inputs
    out = tmp_path / "out"
    argv = ["experiment", "fgd-inflation", "--pods", str(pods), "--nodes", str(nodes)]
    assert main([*argv, "--policies", "bestfit", "--seeds", "3", "--out", str(out)]) == 0
    config = load_experiment(out).config
    assert config["experiment"] == "fgd-inflation"
    assert (config["policies"], config["seeds"], config["inflate"]) == ("bestfit", "3", 1.3)
    assert str(pods) in str(config["pods"])


def test_sweep_cells_reproduce_the_experiments_curves(inputs, tmp_path: Path) -> None:
    """`gpufleet sweep` with `experiment: fgd-inflation` runs the same cells as the
    experiment command: each cell's curve.csv is that run's rows of curves.csv, and the
    table holds the row at 100% arrived."""
    pods, nodes = inputs
    out = tmp_path / "experiment"
    argv = ["experiment", "fgd-inflation", "--pods", str(pods), "--nodes", str(nodes)]
    argv += ["--policies", "fgd,random", "--seeds", "1-2", "--out", str(out), "--workers", "1"]
    assert main(argv) == 0
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "experiment: fgd-inflation\n"
        f"traces: [{{path: {pods.name}, format: openb, name: tiny}}]\n"
        f"cluster: {{file: {nodes.name}}}\n"
        "policies: [fgd, random]\nseeds: 1-2\n"
    )
    swept = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(swept), "--workers", "2"]) == 0
    table = read_csv(swept / "results.csv")
    assert [(r["policy"], r["seed"]) for r in table] == [
        ("fgd", "1"),
        ("fgd", "2"),
        ("random", "1"),
        ("random", "2"),
    ]
    curves = read_csv(out / "curves.csv")
    for row in table:
        cell = read_csv(swept / row["run_dir"] / "curve.csv")
        run = [r for r in curves if (r["policy"], r["seed"]) == (row["policy"], row["seed"])]
        assert cell == run
        at_100 = next(r for r in run if r["arrived_pct"] == "100")
        assert float(row["unallocated_gpus"]) == float(at_100["unallocated_gpus"])
