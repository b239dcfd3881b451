"""The live pass's own cost with a long queue: pending jobs rebuilt every pass (before
`PendingJobs`) versus kept from pass to pass (now), in the same run.

A real `ClusterCache` and `Scheduler` (no API server: binds and reports are not
reached) hold `--nodes` nodes of 8 GPUs and `--pending` single-pod jobs that ask for
GPUs no node has (a queue that does not move, as in the controller benchmark's steady
phase). Between two passes `--changes` of the pending pods are replaced by a watch
event that changes them (a label), and as many by an echo that changes nothing but the
resourceVersion. The "rebuilt" path is the scheduler as it was before: its pending
jobs decoded and viewed anew every pass (`build_workload`, `PendingJob.view`) and why
no node fits diagnosed job by job; "kept" is the scheduler as it is (`PendingJobs`,
one diagnosis per request shape). Timed as CPU time of this thread, medians of
`--repeat` passes each:

- pass: `Scheduler.run_pass` whole, best-fit deciding that nothing fits;
- pending: the part of the pass spent in its pending jobs and their views;
- mirror: `jobs_update` of the pass's pending views against the previous pass's, the
  shadow sender's comparison (kept views are settled by identity, rebuilt ones by
  value).

Both paths' workloads are checked equal on every pass.

    python benchmarks/pending_pass.py [--nodes 500] [--pending 1500] [--changes 15]
        [--repeat 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import print_result, run_facts  # noqa: E402
from controller.devcluster.fleet import gpu_nodes, node_manifest, pod_manifest  # noqa: E402
from controller.dra.inventory import DraState  # noqa: E402
from controller.kube.objects import PodRecord  # noqa: E402
from controller.scheduling.cache import ClusterCache  # noqa: E402
from controller.scheduling.encoders import WholeGpu  # noqa: E402
from controller.scheduling.scheduler import Scheduler, SchedulerOptions  # noqa: E402
from controller.scheduling.workload import (  # noqa: E402
    PendingJob,
    PendingJobs,
    Workload,
    build_workload,
)
from controller.shadow.mirror import jobs_update  # noqa: E402
from policies import ClusterState, JobSpec, JobView, TaskRequest, make_policy  # noqa: E402
from policies.diagnosis import why_no_node_fits  # noqa: E402

ENCODER = WholeGpu()


class Rebuilt:
    """The scheduler's pending jobs as it had them before: decoded and viewed anew."""

    def workload(
        self, pods: Iterable[PodRecord], seq: Mapping[str, int], dra: DraState | None = None
    ) -> Workload:
        return build_workload(pods, seq, ENCODER, dra)

    def view(self, job: PendingJob) -> JobView:
        return job.view()


class Timed:
    """The scheduler's pending jobs (kept or rebuilt), timing what the pass spends in
    them and keeping the pass's workload."""

    def __init__(self, inner: PendingJobs | Rebuilt) -> None:
        self.inner = inner
        self.spent_ms = 0.0
        self.work = Workload([], [], {})

    def workload(
        self, pods: Iterable[PodRecord], seq: Mapping[str, int], dra: DraState | None = None
    ) -> Workload:
        spent, self.work = timed_ms(self.inner.workload, pods, seq, dra)
        self.spent_ms += spent
        return self.work

    def view(self, job: PendingJob) -> JobView:
        spent, view = timed_ms(self.inner.view, job)
        self.spent_ms += spent
        return view


class Queue:
    """A cache with nodes and a pending queue, and the scheduler passing over it."""

    def __init__(self, nodes: int, pending: int, kept: bool) -> None:
        self.cache = ClusterCache(ENCODER)
        specs = gpu_nodes(nodes, 8, ["A100", "V100", "T4"])
        self.cache.replace("nodes", [node_manifest(s) for s in specs])
        self.manifests = [self._pod(i) for i in range(pending)]
        self.cache.replace("pods", self.manifests)
        self.timed = Timed(self.cache.pending if kept else Rebuilt())
        self.cache.pending = self.timed  # type: ignore[assignment]
        options = SchedulerOptions(report_unschedulable=False)
        self.scheduler = Scheduler(make_policy("bestfit"), self.cache, None, options)  # type: ignore[arg-type]
        if not kept:  # and diagnosed job by job, as before shapes were remembered
            self.scheduler._no_node_fits = self._diagnosed  # type: ignore[method-assign]
        self.version = 1
        self.known: dict[str, JobView] = {}

    def _diagnosed(self, spec: JobSpec, state: ClusterState, _known: Any) -> str:
        return why_no_node_fits(spec, state) + self.cache.dra.unfit(spec.node_selector)

    def _pod(self, i: int) -> dict[str, Any]:
        task = TaskRequest(2000, 8192, 1, 1000)
        manifest = pod_manifest(f"pod-{i:06d}", task, allowed_models=["H100"])
        manifest["metadata"].update(
            uid=f"uid-{i}", creationTimestamp="2026-12-06T10:00:00Z", resourceVersion="1"
        )
        return manifest

    def change(self, count: int, step: int) -> None:
        """`count` pods relabelled and `count` echoed (a new resourceVersion only)."""
        for k in range(2 * count):
            i = (step * 2 * count + k) % len(self.manifests)
            manifest = self.manifests[i]
            self.version += 1
            manifest["metadata"]["resourceVersion"] = str(self.version)
            if k < count:
                manifest["metadata"].setdefault("labels", {})["step"] = str(step)
            self.cache.apply("pods", "MODIFIED", manifest)

    def run_pass(self) -> dict[str, float]:
        """One pass: its CPU ms, the part in pending jobs, and the mirror's comparison
        of the pass's pending views with the last pass's."""
        self.timed.spent_ms = 0.0
        pass_ms, _result = timed_ms(self.scheduler.run_pass)
        views = [self.timed.inner.view(job) for job in self.timed.work.pending]
        mirror_ms, (_update, self.known) = timed_ms(jobs_update, views, self.known)
        return {"pass": pass_ms, "pending": self.timed.spent_ms, "mirror": mirror_ms}


def timed_ms(work: Any, *args: Any) -> tuple[float, Any]:
    started = time.thread_time()
    value = work(*args)
    return (time.thread_time() - started) * 1e3, value


def measure(args: argparse.Namespace) -> dict[str, Any]:
    queues = {
        "rebuilt": Queue(args.nodes, args.pending, kept=False),
        "kept": Queue(args.nodes, args.pending, kept=True),
    }
    rows: dict[str, dict[str, list[float]]] = {
        path: {"pass": [], "pending": [], "mirror": []} for path in queues
    }
    for step in range(args.repeat + 1):
        for path, queue in queues.items():
            queue.change(args.changes, step)
            timings = queue.run_pass()
            if step > 0:  # the first pass decodes every job on both paths
                for name, value in timings.items():
                    rows[path][name].append(value)
        if queues["rebuilt"].timed.work != queues["kept"].timed.work:
            raise SystemExit(f"pass {step}: the kept workload differs from the rebuilt one")
    return {
        "median_ms": {
            path: {k: round(statistics.median(v), 3) for k, v in timings.items()}
            for path, timings in rows.items()
        },
        "pending_jobs": len(queues["kept"].timed.work.pending),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pending", type=int, default=1500)
    parser.add_argument(
        "--changes", type=int, default=15, help="pods changed (and as many echoed) per pass"
    )
    parser.add_argument("--repeat", type=int, default=21, help="passes timed")
    args = parser.parse_args()
    machine = run_facts(REPO)
    print_result(machine, args, measure(args))


if __name__ == "__main__":
    main()
