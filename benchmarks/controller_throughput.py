"""Controller throughput and latency on a real kube-apiserver with KWOK GPU nodes, through
the deployed path: `python -m controller.serve serve` (the Deployment's command) as the
controller ServiceAccount with deploy/'s RBAC, leader election on (the Lease in
gpufleet-system), ContinualTrainingJobs reconciled (the CRD is installed), JSON logs at
INFO, metrics on a port of 127.0.0.1. Two replicas by default, as the Deployment runs.

Two phases on one throwaway control plane (etcd, kube-apiserver, kwok on 127.0.0.1):

1. burst: 1,000 fake 8-GPU nodes and 5,000 pending pods exist before the replicas start;
   measured: valid pods bound per second until all are bound.
2. steady: with the burst pods still running, pods arrive at a steady 50/s for 40 s;
   measured: p50/p99 time from pod creation (just before the POST) to the binding being
   seen on a watch, over the valid pods.

In both phases every tenth pod is malformed (`gpufleet.io/attained-gpu-s: "abc"`,
`gpufleet.io/gang-size: "0"` or `gpufleet.io/gpu-milli: "1500"`, in turn). Checked at the
end: every valid pod bound, no malformed pod bound, each malformed pod has a
FailedScheduling Event naming its annotation, and the replicas' /metrics count each in
`gpufleet_rejected_objects_total{kind="Pod"}` under that annotation.

    python benchmarks/controller_throughput.py [--policy fgd] [--nodes 1000] [--pods 5000]
        [--replicas 2] [--repeat 3] [--shadow-policies sia,fgd]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.devcluster.fleet import NAMESPACE, Admin, pod_manifest  # noqa: E402
from controller.devcluster.harness import BindWatcher, ServeReplica, metric  # noqa: E402
from controller.devcluster.install import SYSTEM_NAMESPACE, install_deploy  # noqa: E402
from controller.devcluster.launcher import (  # noqa: E402
    HOW_TO_BUILD,
    ControlPlane,
    PlaneOptions,
    find_binaries,
    free_port,
)
from controller.kube.objects import ATTAINED_GPU_S, GANG_SIZE, GPU_MILLI  # noqa: E402
from policies import NodeSpec, TaskRequest  # noqa: E402

MODELS = ("A100", "V100", "T4")
SHAPES = (
    (0.6, TaskRequest(2000, 8192, 1, 1000)),
    (0.3, TaskRequest(1000, 4096, 1, 500)),
    (0.1, TaskRequest(4000, 16384, 2, 1000)),
)
MALFORMED_EVERY = 10
MALFORMED = (
    (ATTAINED_GPU_S, "abc"),
    (GANG_SIZE, "0"),
    (GPU_MILLI, "1500"),
)
"""One bad annotation per malformed pod, in turn (on a whole-GPU pod, so the share
annotation is the pod's own)."""
EVENTS = f"/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events"


@dataclass(frozen=True)
class PodPlan:
    name: str
    task: TaskRequest
    bad: tuple[str, str] | None = None
    """(annotation, value) that makes the pod malformed."""

    def manifest(self) -> dict[str, Any]:
        notes = dict([self.bad]) if self.bad else None
        return pod_manifest(self.name, self.task, annotations=notes)


@dataclass
class Workload:
    pods: list[PodPlan] = field(default_factory=list)

    @property
    def valid(self) -> set[str]:
        return {p.name for p in self.pods if p.bad is None}

    @property
    def malformed(self) -> dict[str, str]:
        """Malformed pod name → its bad annotation."""
        return {p.name: p.bad[0] for p in self.pods if p.bad is not None}


def cluster(count: int) -> list[NodeSpec]:
    return [
        NodeSpec(f"gpu-node-{i:05d}", 96_000, 786_432, 8, MODELS[i % len(MODELS)])
        for i in range(count)
    ]


def workload(prefix: str, count: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(SHAPES), size=count, p=[p for p, _ in SHAPES])
    pods = []
    for i, pick in enumerate(picks):
        name = f"{prefix}-{i:05d}"
        if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
            bad = MALFORMED[(i // MALFORMED_EVERY) % len(MALFORMED)]
            pods.append(PodPlan(name, SHAPES[0][1], bad))
        else:
            pods.append(PodPlan(name, SHAPES[pick][1]))
    return Workload(pods)


async def create_pods(admin: Admin, plans: list[PodPlan], rate: float | None) -> dict[str, float]:
    """Create pods (at `rate` per second, or as fast as 16 connections allow); returns
    each pod's creation time (taken just before its POST)."""
    created: dict[str, float] = {}
    gate = asyncio.Semaphore(16)

    async def one(plan: PodPlan) -> None:
        async with gate:
            created[plan.name] = time.time()
            await admin.create_pod(plan.manifest())

    if rate is None:
        await asyncio.gather(*map(one, plans))
        return created
    start = time.monotonic()
    pending = []
    for i, plan in enumerate(plans):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(plan)))
    await asyncio.gather(*pending)
    return created


def replicas(plane: ControlPlane, args: argparse.Namespace, workdir: Path) -> list[ServeReplica]:
    """The Deployment's replicas: deploy/ applied (CRD, ServiceAccount, RBAC), each replica
    authenticating with the ServiceAccount's token."""
    account = workdir / "controller-sa.kubeconfig"
    asyncio.run(_install(plane, account))
    flags = [
        *("--policy", args.policy, "--kubeconfig", str(account)),
        *("--lease-namespace", SYSTEM_NAMESPACE, "--log-level", args.log_level),
    ]
    if args.shadow_policies:
        flags += ["--shadow-policies", args.shadow_policies]
    return [
        ServeReplica(flags, free_port(), workdir / f"replica-{i}.log") for i in range(args.replicas)
    ]


async def _install(plane: ControlPlane, account: Path) -> None:
    admin = Admin(str(plane.admin_kubeconfig))
    try:
        await install_deploy(admin.api, plane.server, plane.pki.ca_pem, account)
    finally:
        await admin.close()


async def leader(pair: list[ServeReplica], timeout_s: float = 120) -> ServeReplica:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for replica in pair:
            if not replica.running():
                raise RuntimeError(f"a replica exited:\n{replica.log_tail()}")
            if await replica.identity_if_leading():
                return replica
        await asyncio.sleep(0.5)
    raise TimeoutError("no replica leads")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_use(plane: ControlPlane, pair: list[ServeReplica]) -> dict[str, float]:
    """CPU seconds so far of the replicas and the control plane's processes, and of the
    whole machine ("machine")."""
    pids = {"benchmark": os.getpid()}
    pids.update({f"replica-{i}": r.pid for i, r in enumerate(pair) if r.running()})
    pids.update({name: proc.pid for name, proc in plane.procs.items() if proc.poll() is None})
    return {"machine": machine_busy_seconds()} | {n: cpu_seconds(p) for n, p in pids.items()}


async def until_bound(
    watcher: BindWatcher, names: set[str], pair: list[ServeReplica], timeout_s: float
) -> None:
    """Until every pod in `names` is bound; fails at once if a replica exits (the
    kubelet would restart it, but a replica exiting mid-run is the news here)."""
    waiting = asyncio.ensure_future(watcher.wait_for(names, timeout_s))
    while not waiting.done():
        await asyncio.wait([waiting], timeout=1.0)
        for replica in pair:
            if not replica.running() and not waiting.done():
                waiting.cancel()
                code = replica.proc.returncode if replica.proc else None
                raise RuntimeError(f"replica {replica.log.name} exited with {code}")
    waiting.result()


async def burst_phase(
    plane: ControlPlane, watcher: BindWatcher, pair: list[ServeReplica], load: Workload
) -> dict[str, Any]:
    before = cpu_use(plane, [])
    started = time.time()
    for replica in pair:
        replica.start()
    await until_bound(watcher, load.valid, pair, timeout_s=600)
    after = cpu_use(plane, pair)
    times = sorted(watcher.bound_at[n] for n in load.valid)
    # Where the burst's CPU went (2 cores: at most 2 s per second of wall time); "others"
    # is everything else on the machine (other people's work on a shared box).
    cpu = {name: round(used - before.get(name, 0.0), 1) for name, used in after.items()}
    cpu["others"] = round(cpu.pop("machine") - sum(cpu.values()), 1)
    return {
        "burst_cpu_s": cpu,
        "burst_bound_per_s": round(len(times) / (times[-1] - started), 1),
        "burst_wall_s": round(times[-1] - started, 2),
        # Process start, imports, the initial LISTs and the lease come before the first bind.
        "burst_first_bind_s": round(times[0] - started, 2),
        "burst_bound_per_s_after_first": round(len(times) / (times[-1] - times[0]), 1),
    }


async def steady_phase(
    admin: Admin, watcher: BindWatcher, pair: list[ServeReplica], load: Workload, rate: float
) -> dict[str, Any]:
    created = await create_pods(admin, load.pods, rate=rate)
    await until_bound(watcher, load.valid, pair, timeout_s=120)
    latency = np.array([watcher.bound_at[n] - created[n] for n in load.valid])
    return {
        "steady_rate_per_s": rate,
        "steady_valid_pods": len(load.valid),
        "latency_p50_s": round(float(np.percentile(latency, 50)), 3),
        "latency_p99_s": round(float(np.percentile(latency, 99)), 3),
        "latency_max_s": round(float(latency.max()), 3),
    }


async def failed_scheduling(admin: Admin) -> dict[str, str]:
    """Pod name → note of its FailedScheduling Events (joined)."""
    items, _ = await admin.api.list_all(EVENTS)
    notes: dict[str, str] = {}
    for event in items:
        if event.get("reason") == "FailedScheduling":
            name = event["regarding"]["name"]
            notes[name] = notes.get(name, "") + event.get("note", "")
    return notes


async def check_rejections(
    admin: Admin, watcher: BindWatcher, pair: list[ServeReplica], loads: list[Workload]
) -> dict[str, Any]:
    """Every malformed pod unbound, with an Event naming its annotation and counted
    under that annotation in gpufleet_rejected_objects_total."""
    malformed = {name: bad for load in loads for name, bad in load.malformed.items()}
    assert not malformed.keys() & watcher.bound_at.keys(), "a malformed pod was bound"
    deadline = time.monotonic() + 60
    while True:
        notes = await failed_scheduling(admin)
        missing = [n for n, bad in malformed.items() if bad not in notes.get(n, "")]
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert not missing, f"{len(missing)} malformed pods without their Event, e.g. {missing[:3]}"
    samples = [await replica.metrics() for replica in pair]
    counted = {
        bad: sum(
            metric(s, "gpufleet_rejected_objects_total", kind="Pod", reason=_field(bad))
            for s in samples
        )
        for bad in set(malformed.values())
    }
    expected = Counter(malformed.values())
    assert counted == expected, f"rejected_objects_total {counted}, expected {dict(expected)}"
    return {"malformed_pods": len(malformed), "malformed_with_event_and_count": len(malformed)}


def _field(annotation: str) -> str:
    return f"metadata.annotations[{annotation}]"


async def leader_stats(pair: list[ServeReplica]) -> dict[str, Any]:
    lead = await leader(pair, timeout_s=10)
    samples = await lead.metrics()
    failures = "gpufleet_scheduling_failures_total"
    return {
        "leader_bindings": int(metric(samples, "gpufleet_bindings_total")),
        "leader_bind_retries": int(metric(samples, "gpufleet_bind_retries_total")),
        "leader_conflicts": int(metric(samples, failures, reason="bind_conflict")),
        "leader_expired": int(metric(samples, failures, reason="assumption_expired")),
        "shadow_evaluations": int(metric(samples, "gpufleet_shadow_evaluations_total")),
        "shadow_dropped": int(metric(samples, "gpufleet_shadow_snapshots_dropped_total")),
        "shadow_errors": int(metric(samples, "gpufleet_shadow_errors_total")),
    }


async def benchmark(
    plane: ControlPlane, pair: list[ServeReplica], args: argparse.Namespace
) -> dict[str, Any]:
    admin = Admin(str(plane.admin_kubeconfig), timeout_s=600)
    watcher = BindWatcher(admin.api)
    watching = asyncio.create_task(watcher.run())
    result: dict[str, Any] = {
        "policy": args.policy,
        "replicas": args.replicas,
        "nodes": args.nodes,
        "pods": args.pods,
    }
    burst = workload("burst", args.pods, seed=1)
    steady = workload("steady", int(args.rate * args.steady_s), seed=2)
    try:
        t0 = time.monotonic()
        await admin.create_nodes(cluster(args.nodes))
        await create_pods(admin, burst.pods, rate=None)
        result["setup_s"] = round(time.monotonic() - t0, 1)
        result.update(await burst_phase(plane, watcher, pair, burst))
        print(json.dumps(result), file=sys.stderr, flush=True)
        result.update(await steady_phase(admin, watcher, pair, steady, args.rate))
        result.update(await check_rejections(admin, watcher, pair, [burst, steady]))
        result.update(await leader_stats(pair))
    finally:
        watching.cancel()
        await admin.close()
    return result


def one_run(bin_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    plane = ControlPlane(bin_dir, workdir, PlaneOptions(pods_watch_cache=True))
    pair: list[ServeReplica] = []
    keep = args.keep
    try:
        plane.start()
        pair = replicas(plane, args, workdir)
        return asyncio.run(benchmark(plane, pair, args))
    except Exception:
        keep = True
        for replica in pair:
            print(f"--- {replica.log}:\n{replica.log_tail()}", file=sys.stderr)
        raise
    finally:
        codes = [replica.stop() for replica in pair]
        if any(code not in (0, None) for code in codes):
            print(f"replica exit codes {codes} (expected 0 after SIGTERM)", file=sys.stderr)
        plane.stop()
        if keep:
            print(f"control plane and replica logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)  # made by mkdtemp above


def code_version() -> str:
    """The commit measured, marked dirty when the code the replicas run has uncommitted
    changes (each run starts new replica processes from the working tree)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "controller", "policies")
    return f"{commit}+dirty" if dirty else commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="fgd")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--replicas", type=int, default=2, help="the Deployment runs 2")
    parser.add_argument("--log-level", default="INFO", help="the Deployment's: INFO")
    parser.add_argument("--rate", type=float, default=50.0, help="steady arrivals per second")
    parser.add_argument("--steady-s", type=float, default=40.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--shadow-policies", help="run the replicas with these shadow policies (e.g. sia,fgd)"
    )
    parser.add_argument("--keep", action="store_true", help="keep logs and etcd data")
    args = parser.parse_args()
    bin_dir = find_binaries()
    if bin_dir is None:
        print(HOW_TO_BUILD, file=sys.stderr)
        return 2
    code = code_version()
    # With shadows, each repeat also runs without them: the baseline of the same run.
    variants = [None, args.shadow_policies] if args.shadow_policies else [None]
    runs: dict[str | None, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for shadows in variants:
            runs[shadows].append(
                one_run(bin_dir, argparse.Namespace(**{**vars(args), "shadow_policies": shadows}))
            )
            print(json.dumps({"shadows": shadows, **runs[shadows][-1]}), flush=True)
    machine = {"machine": platform.processor() or platform.machine(), "code": code}
    for shadows, done in runs.items():
        keys = [k for k, v in done[0].items() if isinstance(v, float)]
        medians = {k: float(np.median([r[k] for r in done])) for k in keys}
        print(json.dumps({**machine, "shadows": shadows, "runs": len(done), "median": medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
