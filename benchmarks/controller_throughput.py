"""Controller throughput and latency on a real kube-apiserver with KWOK GPU nodes.

Two phases on one throwaway control plane (etcd, kube-apiserver, kwok on 127.0.0.1):

1. burst: 1,000 fake 8-GPU nodes and 5,000 pending pods exist before the controller
   starts; measured: pods bound per second until all are bound.
2. steady: with the burst pods still running, pods arrive at a steady 50/s for 40 s
   (the cluster ends about 90 % full); measured: p50/p99 time from pod creation (just
   before the POST) to the binding being seen on a watch.

The controller runs as `gpufleet controller run` in its own process, as it would in a
cluster; this process creates pods and watches for bindings.

    python benchmarks/controller_throughput.py [--policy fgd] [--nodes 1000] [--pods 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.kubeapi import KubeApi  # noqa: E402
from policies import NodeSpec, TaskRequest  # noqa: E402
from tests.kube.controlplane import HOW_TO_BUILD, ControlPlane, find_binaries  # noqa: E402
from tests.kube.helpers import Admin, pod_manifest  # noqa: E402

MODELS = ("A100", "V100", "T4")
SHAPES = (
    (0.6, TaskRequest(2000, 8192, 1, 1000)),
    (0.3, TaskRequest(1000, 4096, 1, 500)),
    (0.1, TaskRequest(4000, 16384, 2, 1000)),
)


def cluster(count: int) -> list[NodeSpec]:
    return [
        NodeSpec(f"gpu-node-{i:05d}", 96_000, 786_432, 8, MODELS[i % len(MODELS)])
        for i in range(count)
    ]


def requests(count: int, seed: int = 0) -> list[TaskRequest]:
    rng = np.random.default_rng(seed)
    probabilities = [p for p, _ in SHAPES]
    picks = rng.choice(len(SHAPES), size=count, p=probabilities)
    return [SHAPES[i][1] for i in picks]


class BindWatcher:
    """Watches pods and notes when each is first seen bound."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.bound_at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        _, version = await self.api.list_all("/api/v1/namespaces/default/pods")
        while True:
            params = {"resourceVersion": version, "allowWatchBookmarks": "true"}
            async for event in self.api.watch("/api/v1/namespaces/default/pods", params, 300):
                obj = event["object"]
                version = obj["metadata"].get("resourceVersion", version)
                name = obj["metadata"].get("name", "")
                if obj.get("spec", {}).get("nodeName") and name not in self.bound_at:
                    self.bound_at[name] = time.time()
                    self.changed.set()

    async def wait_for(self, names: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not names <= self.bound_at.keys():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                missing = len(names - self.bound_at.keys())
                raise TimeoutError(f"{missing} pods still unbound")
            await asyncio.wait_for(self.changed.wait(), left)


async def create_pods(
    admin: Admin, prefix: str, tasks: list[TaskRequest], rate: float | None
) -> dict[str, float]:
    """Create pods (at `rate` per second, or as fast as 16 connections allow); returns
    each pod's creation time (taken just before its POST)."""
    created: dict[str, float] = {}
    gate = asyncio.Semaphore(16)

    async def one(i: int, task: TaskRequest) -> None:
        name = f"{prefix}-{i:05d}"
        async with gate:
            created[name] = time.time()
            await admin.create_pod(pod_manifest(name, task))

    if rate is None:
        await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks)))
        return created
    start = time.monotonic()
    pending = []
    for i, task in enumerate(tasks):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(i, task)))
    await asyncio.gather(*pending)
    return created


def start_controller(plane: ControlPlane, policy: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        "from simulator.cli import main; raise SystemExit(main())",
        "controller",
        "run",
        "--policy",
        policy,
        "--kubeconfig",
        str(plane.scheduler_kubeconfig),
        "--log-level",
        "WARNING",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


async def benchmark(plane: ControlPlane, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    admin = Admin(str(plane.admin_kubeconfig), timeout_s=600)
    watcher = BindWatcher(admin.api)
    watch_task = asyncio.create_task(watcher.run())
    result: dict[str, Any] = {"policy": args.policy, "nodes": args.nodes, "pods": args.pods}
    controller = None
    try:
        t0 = time.monotonic()
        await admin.create_nodes(cluster(args.nodes))
        burst = await create_pods(admin, "burst", requests(args.pods, seed=1), rate=None)
        result["setup_s"] = round(time.monotonic() - t0, 1)
        started = time.time()
        controller = start_controller(plane, args.policy, workdir / "controller.log")
        await watcher.wait_for(set(burst), timeout_s=600)
        times = sorted(watcher.bound_at[n] for n in burst)
        result["burst_bound_per_s"] = round(len(burst) / (times[-1] - started), 1)
        result["burst_wall_s"] = round(times[-1] - started, 2)
        # Process start, imports and the initial LISTs come before the first bind.
        result["burst_first_bind_s"] = round(times[0] - started, 2)
        result["burst_bound_per_s_after_first"] = round(len(burst) / (times[-1] - times[0]), 1)
        print(json.dumps(result), file=sys.stderr, flush=True)
        steady_tasks = requests(int(args.rate * args.steady_s), seed=2)
        steady = await create_pods(admin, "steady", steady_tasks, rate=args.rate)
        await watcher.wait_for(set(steady), timeout_s=120)
        latency = np.array([watcher.bound_at[n] - steady[n] for n in steady])
        result["steady_rate_per_s"] = args.rate
        result["steady_pods"] = len(steady)
        result["latency_p50_s"] = round(float(np.percentile(latency, 50)), 3)
        result["latency_p99_s"] = round(float(np.percentile(latency, 99)), 3)
        result["latency_max_s"] = round(float(latency.max()), 3)
    finally:
        if controller is not None:
            controller.terminate()
            controller.wait(timeout=30)
        watch_task.cancel()
        await admin.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="fgd")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50.0, help="steady arrivals per second")
    parser.add_argument("--steady-s", type=float, default=40.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    bin_dir = find_binaries()
    if bin_dir is None:
        print(HOW_TO_BUILD, file=sys.stderr)
        return 2
    runs = []
    for _ in range(args.repeat):
        workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
        plane = ControlPlane(bin_dir, workdir, pods_watch_cache=True)
        try:
            plane.start()
            runs.append(asyncio.run(benchmark(plane, args, workdir)))
        finally:
            plane.stop()
            plane.cleanup_dir()
        print(json.dumps(runs[-1]), flush=True)
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    medians = {k: float(np.median([r[k] for r in runs])) for k in keys}
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "runs": len(runs),
                "median": medians,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
