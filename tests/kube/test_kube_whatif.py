"""`gpufleet whatif` against a live cluster on the real API server.

1. Forecast accuracy: 200 pods with declared runtimes wait for the A100 KWOK nodes while
   the controller (best-fit) is paused, and five ContinualTrainingJobs will open three
   windows each on the T4 nodes (kept apart, so that no window misses its deadline and
   is withdrawn: the forecast does not model withdrawal).
   Twelve short pods ran before, so the history calibrates declared runtimes by the
   cluster's latency. At t0 the live capture `whatif --kubeconfig` makes is taken, the
   controller and the CTJ reconciler resume, and the forecast runs from that snapshot.
   Each pod's predicted start must be within 10% of the makespan of its actual start
   (our Binding's `bound-at`), at the p90 over pods; the measured error is printed.
2. `whatif --add` agrees with replaying the recorded trace with that job added: the
   cluster is full of running pods and has a queue; a recording made from one LIST at t0
   (`controller record`'s recorder) replayed through the simulator with the job submitted
   at the recording's end starts the job exactly when `whatif --add` said it would.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller.ctj.reconciler import CtjReconciler
from controller.devcluster.fleet import Admin, gpu_nodes, pod_manifest
from controller.kube.informer import Informer
from controller.kube.kubeapi import KubeApi, load_config
from controller.kube.objects import BOUND_AT, POD_GROUP_LABEL, parse_time, pod_from_json
from controller.recorder import TraceRecorder
from controller.runtime import Controller, ControllerOptions
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.scheduler import SchedulerOptions
from controller.scheduling.workload import build_workload, node_spec
from controller.shadow.runner import ShadowOptions, ShadowRunner
from controller.whatif.capture import list_snapshot
from gpufleet.cli import main
from policies import FixedDuration, TaskRequest, make_policy
from simulator.engine import Simulation
from tests.conftest import job_rows
from tests.kube.ctj_helpers import (
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
)
from tests.kube.helpers import eventually
from traces.snapshot import write_snapshot

pytestmark = pytest.mark.kube

PODS = 200
WARM = 12
CTJS = 5


def gpus(n: int) -> TaskRequest:
    return TaskRequest(1000, 1024, n, 1000)


async def _create(admin: Admin, manifests: list[dict[str, Any]]) -> None:
    gate = asyncio.Semaphore(16)

    async def one(manifest: dict[str, Any]) -> None:
        async with gate:
            await admin.create_pod(manifest)

    await asyncio.gather(*(one(m) for m in manifests))


def predictions(out: Path, policy: str) -> dict[str, dict[str, str]]:
    with (out / "predictions.csv").open() as handle:
        rows = csv.DictReader(handle)
        return {_strip(r["job_id"]): r for r in rows if r["policy"] == policy}


def test_forecast_predicts_each_start_within_a_tenth_of_the_makespan(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    shapes = [(int(rng.choice([1, 1, 2])), int(rng.integers(20, 40))) for _ in range(PODS)]
    keep = Artefacts.from_environment()
    out = (keep.directory if keep else tmp_path) / "forecast"

    async def scenario() -> tuple[float, dict[str, float], float]:
        admin = Admin(str(ctj_env.plane.admin_kubeconfig))
        api = KubeApi(load_config(str(ctj_env.sa_kubeconfig)))
        eager = SchedulerOptions(min_pass_interval_s=0.0)
        controller = Controller(api, make_policy("bestfit"), ControllerOptions(scheduler=eager))
        reconciler = CtjReconciler(api, supervisor=controller.supervisor)
        try:
            t4 = [replace(n, name=f"t4-{n.name}") for n in gpu_nodes(2, 4, ["T4"])]
            await admin.create_nodes([*gpu_nodes(15, 4, ["A100"]), *t4])
            await eventually(lambda: _ready(admin, 17), timeout_s=60, what="nodes ready")
            await controller.start()
            if keep is not None:
                await keep.start(admin, controller)
            # Earlier work: finished pods whose run times calibrate declared runtimes.
            await _create(
                admin, [pod_manifest(f"warm-{i}", gpus(1), runtime="3s") for i in range(WARM)]
            )
            await eventually(lambda: _all_finished(admin, WARM), timeout_s=120, what="warm-up")
            controller.scheduler.pause()
            manifests = [
                pod_manifest(f"job-{i:03d}", gpus(n), runtime=f"{s}s", allowed_models=["A100"])
                for i, (n, s) in enumerate(shapes)
            ]
            await _create(admin, manifests)
            opening = time.time() + 20
            for k in range(CTJS):
                manifest = ctj_manifest(
                    f"stream-{k}",
                    window_s=20,
                    deadline_s=15,
                    windows=3,
                    runtime="4s",
                    replicas=1,
                    gpu_models=("T4",),
                    historyLimit=5,
                )
                manifest["spec"]["retrain"]["startTime"] = now_rfc3339(opening)
                await create_ctj(admin.api, manifest)
            await reconciler.start_informers()
            # The live capture `whatif --kubeconfig` makes, timed to resume scheduling the
            # moment it is taken; the forecast itself then runs from the file.
            t0 = time.time()
            snapshot = await list_snapshot(admin.api, WholeGpu(), "gpufleet", t0, "bestfit", 900)
            controller.scheduler.resume()
            reconciler.start_reconciling()
            write_snapshot(snapshot, tmp_path / "snapshot.json")
            forecast = ["whatif", "--snapshot", str(tmp_path / "snapshot.json")]
            forecast += ["--policies", "bestfit", "--horizon", "900", "--out", str(out)]
            assert await asyncio.to_thread(main, forecast) == 0
            expected = WARM + PODS + CTJS * 3
            started, finished = await eventually(
                lambda: _all_finished(admin, expected), timeout_s=500, what="every pod finished"
            )
            return t0, started, max(finished)
        finally:
            if keep is not None:
                await keep.stop()
            await reconciler.stop()
            await controller.stop()
            await api.close()
            await admin.close()

    t0, started, last_end = asyncio.run(scenario())
    predicted = predictions(out, "bestfit")
    makespan = last_end - t0
    errors = []
    for job, at in started.items():
        if job.startswith("warm-"):
            continue
        row = predicted.get(job)
        assert row is not None, f"{job} started but was not forecast"
        assert row["source"] == "declared"
        errors.append(abs(float(row["start_p50_s"]) - (at - t0)))
    assert len(errors) == PODS + CTJS * 3
    p90 = float(np.percentile(errors, 90))
    print(
        f"\nforecast error over {len(errors)} jobs: mean {np.mean(errors):.2f} s, p90 "
        f"{p90:.2f} s, max {max(errors):.2f} s; makespan {makespan:.1f} s "
        f"(p90 = {100 * p90 / makespan:.1f}% of it)"
    )
    assert p90 <= 0.10 * makespan


class Artefacts:
    """With GPUFLEET_WHATIF_ARTIFACTS=DIR the run is also recorded (`controller record`'s
    recorder), shadowed by best-fit itself and FGD, and DIR keeps `forecast/`,
    `recorded/` and `shadow.jsonl` (examples/whatif-kwok/ was made so, for
    notebooks/06-whatif.ipynb)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.recorder = TraceRecorder(WholeGpu())
        shadows = (make_policy("bestfit"), make_policy("fgd"))
        self.shadows = ShadowRunner(
            ShadowOptions(shadows, directory / "shadow.jsonl", 0.5), "bestfit"
        )
        self.tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_environment(cls) -> Artefacts | None:
        where = os.environ.get("GPUFLEET_WHATIF_ARTIFACTS")
        return cls(Path(where)) if where else None

    async def start(self, admin: Admin, controller: Controller) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        informers = [
            Informer(admin.api, "nodes", "/api/v1/nodes", self.recorder),
            Informer(admin.api, "pods", "/api/v1/pods", self.recorder),
        ]
        self.tasks = [asyncio.create_task(i.run()) for i in informers]
        self.tasks.append(asyncio.create_task(self.shadows.run()))
        controller.scheduler.on_decided = self.shadows.offer

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.recorder.write(self.directory / "recorded", force=True)


async def _ready(admin: Admin, count: int) -> bool:
    return len(await admin.ready_nodes()) >= count


async def _all_finished(admin: Admin, expected: int) -> tuple[dict[str, float], list[float]] | None:
    """Start of each job (namespace-less job id → bound-at) and every pod's end, once
    `expected` pods of ours have all succeeded."""
    pods = await admin.pods()
    ours = [p for p in pods if p["spec"].get("schedulerName") == "gpufleet"]
    if len(ours) < expected or any(p["status"].get("phase") != "Succeeded" for p in ours):
        return None
    started: dict[str, float] = {}
    ends = []
    for pod in ours:
        meta = pod["metadata"]
        job = meta.get("labels", {}).get(POD_GROUP_LABEL) or meta["name"]
        at = float(meta["annotations"][BOUND_AT])
        started[job] = min(started.get(job, at), at)
        for status in pod["status"].get("containerStatuses") or ():
            ends.append(parse_time(status["state"]["terminated"]["finishedAt"]))
    return started, ends


def _strip(job_id: str) -> str:
    return job_id.split("/", 1)[-1]


ADDED = """\
apiVersion: v1
kind: Pod
metadata:
  name: mine
  annotations: {gpufleet.io/sim-runtime: 30s}
spec:
  schedulerName: gpufleet
  tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
  containers:
  - name: main
    image: fake
    resources: {limits: {nvidia.com/gpu: 2}, requests: {cpu: 1000m, memory: 1024Mi}}
"""


def test_add_agrees_with_replaying_the_recording_with_the_job_added(
    kube: Any, tmp_path: Path
) -> None:
    """Two 4-GPU nodes full of running pods (300-700 s) and four queued 1- and 2-GPU pods;
    the added 2-GPU pod starts when FIFO frees two GPUs for it after the queue."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(ADDED)
    out = tmp_path / "whatif"

    async def scenario() -> tuple[float, list[dict[str, Any]], list[dict[str, Any]]]:
        admin = Admin(str(kube.admin_kubeconfig))
        api = KubeApi(load_config(str(kube.scheduler_kubeconfig)))
        eager = SchedulerOptions(min_pass_interval_s=0.0)
        controller = Controller(api, make_policy("fifo"), ControllerOptions(scheduler=eager))
        try:
            await admin.create_nodes(gpu_nodes(2, 4, ["A100"]))
            await eventually(lambda: _ready(admin, 2), timeout_s=60, what="nodes ready")
            await controller.start()
            running = [(2, 700), (1, 300), (1, 450), (2, 500), (1, 650), (1, 350)]
            for i, (n, s) in enumerate(running):
                await admin.create_pod(pod_manifest(f"run-{i}", gpus(n), runtime=f"{s}s"))
            await eventually(lambda: _bound(admin, len(running)), what="running pods bound")
            # Creation times are whole seconds: the queue must arrive after every bind.
            await asyncio.sleep(1.5)
            for i, (n, s) in enumerate([(2, 100), (1, 60), (2, 80), (1, 40)]):
                await admin.create_pod(pod_manifest(f"wait-{i}", gpus(n), runtime=f"{s}s"))
            await controller.settle()
            await asyncio.sleep(1.0)
            await controller.settle()
            nodes, _ = await admin.api.list_all("/api/v1/nodes")
            pods, _ = await admin.api.list_all("/api/v1/pods")
            t0 = time.time()
            args = ["whatif", "--kubeconfig", str(kube.admin_kubeconfig), "--policies", "fifo"]
            assert (
                await asyncio.to_thread(main, [*args, "--add", str(job_file), "--out", str(out)])
                == 0
            )
            return t0, nodes, pods
        finally:
            await controller.stop()
            await api.close()
            await admin.close()

    t0, nodes, pods = asyncio.run(scenario())
    whatif = predictions(out, "fifo")
    snapshot_at = float(_snapshot_time(out))
    answer = snapshot_at + float(whatif["mine"]["start_p50_s"])

    recorder = TraceRecorder(WholeGpu(), clock=lambda: t0)
    recorder.replace("nodes", nodes)
    recorder.replace("pods", pods)
    trace = recorder.trace(t0)
    spec = _added_spec(t0)
    end = trace.window.at(t0)
    jobs = [*trace.jobs, replace(spec, id="mine", submit_time=end)]
    node_specs = [_node_spec(n) for n in sorted(recorder.nodes.values(), key=lambda n: n.name)]
    rows = job_rows(Simulation(node_specs, jobs, make_policy("fifo")).run())
    replayed = trace.window.origin + float(rows["mine"]["start_s"])
    print(f"\nwhatif --add: starts at t0+{answer - t0:.3f} s; replay: t0+{replayed - t0:.3f} s")
    assert rows["mine"]["status"] == "completed"
    assert answer - t0 > 100  # it waits for running pods to end, not a trivial answer
    assert abs(answer - replayed) <= 0.002  # both files keep times to the millisecond


async def _bound(admin: Admin, count: int) -> bool:
    pods = await admin.pods()
    return sum(bool(p["spec"].get("nodeName")) for p in pods) >= count


def _snapshot_time(out: Path) -> float:
    return float(json.loads((out / "snapshot.json").read_text())["taken_at_unix"])


def _added_spec(now: float) -> Any:
    manifest = yaml.safe_load(ADDED)
    manifest["metadata"].update(
        namespace="default", uid="added", creationTimestamp=now_rfc3339(now)
    )
    workload = build_workload([pod_from_json(manifest)], {}, WholeGpu())
    spec = workload.pending[0].spec
    return replace(spec, work=FixedDuration(spec.work.total))


def _node_spec(node: Any) -> Any:
    return node_spec(node, WholeGpu())
