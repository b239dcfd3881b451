"""What handing live snapshots to the shadow child costs the live process, whole versus as
updates (controller.shadow.mirror), at the size of the controller benchmark's steady
phase: 500 nodes of 8 GPUs, 3,000 running jobs, 1,500 pending jobs that wait for GPUs
no node has (a queue that does not move), and between two judged snapshots `--changes`
pods arriving and starting while as many running jobs finish (150: 50 pods/s for the
~3 s between judged snapshots that the benchmark measured).

Nodes and pods go through the controller's own decoders (manifests → records →
`PendingJobs`, as the scheduler keeps them), so pending and running views keep their
identity while unchanged. Passes are best-fit on the live state. Timed, in the live
process, per judged snapshot, as CPU time of the thread doing it (what it holds the
interpreter lock for, and steadier than wall time on a shared machine; medians of
`--repeat`):

- offer: `ShadowRunner.offer` on the hot path (copies the cluster arrays), every pass;
- whole: pickling the snapshot and the pass's `SchedulingResult` as the process pool
  pickled the call before updates (`ForkingPickler`, the pool's own pickler);
- update: `SnapshotSender.update` + `live_plan` + pickling both: what the runner does now.

The child side (unpickling and applying the update) is timed too, for information: it
runs in the child, at a lower CPU priority. Each rebuilt snapshot is checked equal to
the live one.

    python benchmarks/shadow_send.py [--nodes 500] [--running 3000] [--pending 1500]
        [--changes 150] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import print_result, run_facts  # noqa: E402
from controller.devcluster.fleet import gpu_nodes, node_manifest, pod_manifest  # noqa: E402
from controller.kube.objects import PodRecord, node_from_json, pod_from_json  # noqa: E402
from controller.scheduling.encoders import WholeGpu  # noqa: E402
from controller.scheduling.workload import PendingJobs, build_workload, node_spec  # noqa: E402
from controller.shadow.mirror import SnapshotMirror, SnapshotSender  # noqa: E402
from controller.shadow.runner import ShadowOptions, ShadowRunner, live_plan  # noqa: E402
from policies import (  # noqa: E402
    ClusterState,
    Context,
    JobStatus,
    JobView,
    Place,
    SchedulingResult,
    Snapshot,
    TaskRequest,
    make_policy,
)
from policies.placement import allocation_shape  # noqa: E402

SHAPES = (
    (0.6, TaskRequest(2000, 8192, 1, 1000)),
    (0.3, TaskRequest(1000, 4096, 1, 500)),
    (0.1, TaskRequest(4000, 16384, 2, 1000)),
)
"""The controller benchmark's pod shapes and their shares."""
ENCODER = WholeGpu()


class SteadyCluster:
    """The live side: a cluster, its pods and the jobs a best-fit pass made of them."""

    def __init__(self, nodes: int, seed: int) -> None:
        specs = gpu_nodes(nodes, 8, ["A100", "V100", "T4"])
        self.state = ClusterState(
            [node_spec(node_from_json(node_manifest(s)), ENCODER) for s in specs]
        )
        self.rng = np.random.default_rng(seed)
        self.pods: dict[str, PodRecord] = {}
        self.seq: dict[str, int] = {}
        self.running: dict[str, JobView] = {}
        self.policy = make_policy("bestfit")
        self.now = 1_000_000.0
        self.jobs = PendingJobs(ENCODER)

    def arrive(self, count: int, models: str | None = None) -> None:
        picks = self.rng.choice(len(SHAPES), size=count, p=[p for p, _ in SHAPES])
        for pick in picks:
            name = f"pod-{len(self.seq):06d}"
            allowed = [models] if models else None
            manifest = pod_manifest(name, SHAPES[pick][1], allowed_models=allowed)
            manifest["metadata"]["uid"] = name
            manifest["metadata"]["creationTimestamp"] = "2026-12-06T10:00:00Z"
            pod = pod_from_json(manifest)
            self.pods[pod.uid] = pod
            self.seq[pod.uid] = len(self.seq)

    def finish(self, count: int) -> None:
        for jid in self.rng.choice(list(self.running), size=count, replace=False):
            view = self.running.pop(str(jid))
            assert view.placement is not None
            for task in view.placement.tasks:
                node = self.state.node_index[task.node]
                self.state.release(
                    node,
                    task.gpus,
                    task.gpu_milli,
                    view.spec.task.cpu_milli,
                    view.spec.task.mem_mib,
                )

    def run_pass(self) -> tuple[Snapshot, SchedulingResult]:
        """Pending views rebuilt from the pods, a best-fit pass, its placements started."""
        self.now += 0.02
        pending = self.jobs.workload(self.pods.values(), self.seq).pending
        views = [self.jobs.view(job) for job in pending]
        snapshot = Snapshot(self.state.view(), list(self.running.values()), views, self.now)
        result = self.policy.schedule(snapshot, Context(np.random.default_rng(0)))
        by_id = {job.spec.id: job for job in pending}
        for decision in result.decisions:
            if isinstance(decision, Place):
                self._start(by_id[decision.job_id].spec, decision, by_id[decision.job_id].pods)
        return snapshot, result

    def _start(self, spec: Any, decision: Place, pods: tuple[PodRecord, ...]) -> None:
        for task in decision.placement.tasks:
            node = self.state.node_index[task.node]
            self.state.allocate(
                node, task.gpus, task.gpu_milli, spec.task.cpu_milli, spec.task.mem_mib
            )
        shape = allocation_shape(decision.placement, self.state)
        self.running[spec.id] = JobView(
            spec, JobStatus.RUNNING, decision.placement, shape, started_at=self.now
        )
        for pod in pods:
            del self.pods[pod.uid]


def steady(args: argparse.Namespace) -> SteadyCluster:
    """`--running` jobs placed, then `--pending` that no node can take (they ask for
    H100s), rebuilt every pass like any pending job."""
    live = SteadyCluster(args.nodes, args.seed)
    live.arrive(args.running)
    live.run_pass()
    if len(live.running) < args.running:
        raise SystemExit(
            f"only {len(live.running)} of {args.running} jobs fit on {args.nodes} nodes"
        )
    live.arrive(args.pending, models="H100")
    return live


def timed(work: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """CPU milliseconds of this thread `work(*args)` took, and its value."""
    started = time.thread_time()
    value = work(*args)
    return (time.thread_time() - started) * 1e3, value


def measure(args: argparse.Namespace) -> dict[str, Any]:
    live = steady(args)
    runner = ShadowRunner(ShadowOptions((make_policy("fgd"),)), "bestfit")
    sender, mirror = SnapshotSender(), SnapshotMirror()
    rows: dict[str, list[float]] = {k: [] for k in ("offer", "whole", "update", "child")}
    sizes: dict[str, list[int]] = {"whole": [], "update": [], "views": []}
    first: dict[str, float] = {}
    for judged in range(args.repeat + 1):
        live.finish(args.changes)
        live.arrive(args.changes)
        snapshot, result = live.run_pass()
        offer_ms, _ = timed(runner.offer, snapshot, result)
        sent = replace(snapshot, cluster=snapshot.cluster.copy())  # what the slot holds
        whole_ms, whole = timed(ForkingPickler.dumps, (sent, result))
        update_ms, (update, payload) = timed(_update, sender, sent, result)
        child_ms, rebuilt = timed(_rebuild, mirror, payload)
        sender.confirm(update)
        _check(rebuilt, sent)
        if judged == 0:  # the first update is whole: nothing to build on yet
            first = {"update_ms": round(update_ms, 2), "bytes": len(payload)}
            continue
        for name, value in zip(rows, (offer_ms, whole_ms, update_ms, child_ms), strict=True):
            rows[name].append(value)
        sizes["whole"].append(len(whole))
        sizes["update"].append(len(payload))
        sizes["views"].append(update.views)
    return {
        "median_ms": {k: round(statistics.median(v), 3) for k, v in rows.items()},
        "median_bytes": {k: int(statistics.median(v)) for k, v in sizes.items()},
        "first_update": first,
        "running_at_end": len(live.running),
        "pending_at_end": len(build_workload(live.pods.values(), live.seq, ENCODER).pending),
    }


def _update(sender: SnapshotSender, snapshot: Snapshot, result: SchedulingResult) -> Any:
    update = sender.update(snapshot)
    return update, ForkingPickler.dumps((update, live_plan(result)))


def _rebuild(mirror: SnapshotMirror, payload: bytes) -> Snapshot:
    update, _plan = ForkingPickler.loads(payload)
    return mirror.apply(update)


def _check(rebuilt: Snapshot, sent: Snapshot) -> None:
    everything = np.arange(sent.cluster.num_nodes)
    ours, theirs = rebuilt.cluster.node_rows(everything), sent.cluster.node_rows(everything)
    same = list(rebuilt.running) == list(sent.running) and list(rebuilt.pending) == list(
        sent.pending
    )
    if not same or any(not np.array_equal(ours[k], v) for k, v in theirs.items()):
        raise SystemExit("the child's rebuilt snapshot differs from the live one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--running", type=int, default=3000)
    parser.add_argument("--pending", type=int, default=1500)
    parser.add_argument(
        "--changes", type=int, default=150, help="arrivals and finishes between judged snapshots"
    )
    parser.add_argument("--repeat", type=int, default=15, help="judged snapshots timed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    machine = run_facts(REPO)
    print_result(machine, args, measure(args))


if __name__ == "__main__":
    main()
