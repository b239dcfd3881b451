"""The live pass's own cost with a long queue: pending jobs rebuilt every pass (before
`PendingJobs`) versus kept from pass to pass (now), in the same run.

A real `ClusterCache` and `Scheduler` (no API server: binds and reports are not
reached) hold `--nodes` nodes of 8 GPUs and `--pending` single-pod jobs that ask for
GPUs no node has (a queue that does not move, as in the controller benchmark's steady
phase). Between two passes `--changes` of the pending pods are replaced by a watch
event that changes them (a label), and as many by an echo that changes nothing but the
resourceVersion. The "rebuilt" path is the scheduler with its pending jobs decoded and
viewed anew every pass (`build_workload` and `PendingJob.view`, what it did before);
"kept" is the scheduler as it is. Timed as CPU time of this thread, medians of
`--repeat` passes each:

- pending: the pass's pending jobs and their views (what changed);
- pass: `Scheduler.run_pass` whole, best-fit deciding nothing fits (the same in both);
- mirror: `jobs_update` of the pending views against the previous pass's, the shadow
  sender's comparison (kept views are settled by identity, rebuilt ones by value).

Both paths' workloads are checked equal on every pass.

    python benchmarks/pending_pass.py [--nodes 500] [--pending 1500] [--changes 15]
        [--repeat 21]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.devcluster.fleet import gpu_nodes, node_manifest, pod_manifest  # noqa: E402
from controller.dra.inventory import DraState  # noqa: E402
from controller.kube.objects import PodRecord  # noqa: E402
from controller.scheduling.cache import ClusterCache  # noqa: E402
from controller.scheduling.encoders import WholeGpu  # noqa: E402
from controller.scheduling.scheduler import Scheduler, SchedulerOptions  # noqa: E402
from controller.scheduling.workload import (  # noqa: E402
    PendingJob,
    Workload,
    build_workload,
)
from controller.shadow.mirror import jobs_update  # noqa: E402
from policies import JobView, TaskRequest, make_policy  # noqa: E402

ENCODER = WholeGpu()


class Rebuilt:
    """The scheduler's pending jobs as it had them before: decoded and viewed anew."""

    def workload(
        self, pods: Iterable[PodRecord], seq: Mapping[str, int], dra: DraState | None = None
    ) -> Workload:
        return build_workload(pods, seq, ENCODER, dra)

    def view(self, job: PendingJob) -> JobView:
        return job.view()


class Queue:
    """A cache with nodes and a pending queue, and the scheduler passing over it."""

    def __init__(self, nodes: int, pending: int) -> None:
        self.cache = ClusterCache(ENCODER)
        specs = gpu_nodes(nodes, 8, ["A100", "V100", "T4"])
        self.cache.replace("nodes", [node_manifest(s) for s in specs])
        self.manifests = [self._pod(i) for i in range(pending)]
        self.cache.replace("pods", self.manifests)
        options = SchedulerOptions(report_unschedulable=False)
        self.scheduler = Scheduler(make_policy("bestfit"), self.cache, None, options)  # type: ignore[arg-type]
        self.version = 1

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

    def pending(self) -> tuple[Workload, list[JobView]]:
        pods = self.cache.pending_pods()
        work = self.cache.pending.workload(pods, self.cache.seq)
        return work, [self.cache.pending.view(job) for job in work.pending]


def timed_ms(work: Any, *args: Any) -> tuple[float, Any]:
    started = time.thread_time()
    value = work(*args)
    return (time.thread_time() - started) * 1e3, value


def measure(args: argparse.Namespace) -> dict[str, Any]:
    queues = {"rebuilt": Queue(args.nodes, args.pending), "kept": Queue(args.nodes, args.pending)}
    queues["rebuilt"].cache.pending = Rebuilt()  # type: ignore[assignment]
    rows: dict[str, dict[str, list[float]]] = {
        path: {"pending": [], "pass": [], "mirror": []} for path in queues
    }
    known: dict[str, dict[str, JobView]] = {path: {} for path in queues}
    for step in range(args.repeat + 1):
        works = {}
        for path, queue in queues.items():
            queue.change(args.changes, step)
            pending_ms, (work, views) = timed_ms(queue.pending)
            mirror_ms, (_update, by_id) = timed_ms(jobs_update, views, known[path])
            known[path] = by_id
            pass_ms, _result = timed_ms(queue.scheduler.run_pass)
            works[path] = work
            if step > 0:  # the first pass decodes every job on both paths
                for name, value in zip(
                    ("pending", "pass", "mirror"), (pending_ms, pass_ms, mirror_ms), strict=True
                ):
                    rows[path][name].append(value)
        if works["rebuilt"] != works["kept"]:
            raise SystemExit(f"pass {step}: the kept workload differs from the rebuilt one")
    return {
        "median_ms": {
            path: {k: round(statistics.median(v), 3) for k, v in timings.items()}
            for path, timings in rows.items()
        },
        "pending_jobs": len(works["kept"].pending),
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
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    machine = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit or "unknown",
        "load_1min": round(os.getloadavg()[0], 2),
    }
    result = measure(args)
    print(
        json.dumps(
            {**machine, **vars(args), **result, "load_1min_after": round(os.getloadavg()[0], 2)}
        )
    )


if __name__ == "__main__":
    main()
