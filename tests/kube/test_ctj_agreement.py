"""Agreement over many CTJs and windows: the controller as deployed (`--policy=edf`, then
`--policy=thief`) runs 16 ContinualTrainingJobs for 20 windows each
(periodic, cron and drift-triggered) on KWOK nodes, with window pods that run as long as
their granted allocation earns (`ctj.gpufleet.io/simulated-runtime`); the run is
recorded (`controller.recorder.TraceRecorder`: nodes and every pod), its CTJs become the
simulator's streams (`controller.ctj.streams`) and `ContinualRun` replays them on the
recorded nodes under the same policy. Per window the outcome (completed or missed), the
chosen config and the replica count (pods bound; the simulator's most GPUs held) must be
equal.

The workload (10 s windows, 7 s deadlines, 2 s rounds):

* `a-*` (4 CTJs, one or two GPUs each, configs of 4.15 and 4.45 GPU-seconds of quality
  0.6 and 1) open together on a node of 2 A100s: each instant's configs are planned
  jointly, the allocators admit some and leave the rest to miss, from models decaying at
  different rates, so configs and outcomes differ per window; `a-hopeless` needs more
  work than 2 A100s do by a deadline: never placed, missed;
* `h-*` (4, up to two GPUs each) open together 2 s later on 6 H100s: shares of one or
  two GPUs; `h-ceiling` is at its ceiling and never decays: no pods, `AtCeiling`;
* `v-*` (3) are drift-triggered on 3 V100s: each opens when its accuracy falls below 0.7
  (first at the closed-form crossing time), then no sooner than 10 s after the last;
* `c-*` (3, one or two GPUs each, the `a-*` configs) open together on a cron schedule
  with a seconds field on 2 T4s, 3, 13, 25, 35, 43 and 55 s into each minute from the
  zero (the expression names those seconds of the wall clock): windows of 8 to 12 s,
  each valued over its own length, with 6 s deadlines.

With the whole-GPU device plugin (`--backend=whole`) the nodes tell the policy their GPUs
cannot be shared (`NodeSpec.shares_gpus`, recorded with the nodes), so neither host
plans a share below a whole GPU here (tests/kube/test_ctj_sharing.py).

Wall time enters where the controller acts later than the simulator. Both decide on
rounds at even seconds from the recording's zero (the controller's rounds fall on the
clock's multiples of 2 s, and the zero is one of them); windows open 0.1 s after a
round, and every runtime a policy may choose ends 0.12-0.55 s past an even second or
misses every deadline, so each event falls inside the same round in both hosts and the
controller's latency (up to ~1.4 s) cannot move it into another; pod finish times, which
the API keeps in whole seconds, then judge a deadline as the simulator does. Work a
preemption leaves half done would let that latency in (the work done by then differs by
it, and a waiting window's work is the backlog the next openings' configs are planned
around), so no node is contended across instants.

Cron fires on whole seconds, so a `c-*` window opens at an odd one: 1 s after a round
and 1 s before the next, by which its pods must reach the scheduler; its deadline, 6 s
on, falls on an odd second too, before the next firing. Its configs are planned around
the retraining work waiting anywhere in the cluster, so no firing falls within 1 s of a
change to that: none 1, 7 or 9 s into a 10 s period (the `c-*` windows admitted at 2 s
would be the backlog of the `h-*` openings at 2.1 s; `a-*` deadlines withdraw waiting
windows at 7.1 s; `c-*` windows admitted at 10 s, that of the `a-*` openings at 0.1 s).
At 3 and 5 s the hopeless `a-*` window waits, so each `c-*` opening takes the cheaper
config, and the allocators choose which windows run. The numbers serve all that, not
the result (the simulator's).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.crd import (
    ACC_START,
    CONFIG,
    NAME_LABEL,
    WINDOW_LABEL,
    WINDOW_START,
    ctj_from_json,
)
from controller.ctj.runtime import SIMULATED_RUNTIME
from controller.ctj.streams import recorded_streams
from controller.devcluster.fleet import NAMESPACE, Admin
from controller.kube.informer import Informer
from controller.recorder import TraceRecorder
from controller.scheduling.effects import now_rfc3339
from controller.scheduling.encoders import WholeGpu
from policies import NodeSpec, make_policy
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.kube.ctj_helpers import (
    CTJS,
    CtjEnvironment,
    ServeProcess,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    run,
)
from traces.canonical import NODES_FILE, read_nodes

pytestmark = pytest.mark.kube

ROUND_S = 2.0
WINDOW_S, DEADLINE_S, WINDOWS = 10, 7, 20
LEAD_S = 6.0
"""From creating the CTJs to the first opening at the latest."""
CRON_OFFSETS = (3, 13, 25, 35, 43, 55)
"""Seconds into each minute from the origin at which the `c-*` CTJs' windows open."""
CRON_DEADLINE_S = 6
"""Even, so a cron window's deadline falls on an odd second too, before the next firing."""
NODES = [
    NodeSpec("a100-0", 32_000, 131_072, 2, "A100"),
    NodeSpec("h100-0", 32_000, 131_072, 6, "H100"),
    NodeSpec("v100-0", 32_000, 131_072, 3, "V100"),
    NodeSpec("t4-0", 32_000, 131_072, 2, "T4"),
]
FLOOR, CEILING, HALF_GAIN = 0.3, 0.9, 2.0
# Work per config: on every share a policy may give (a quarter, a half, one GPU, two at
# 1.8x, up to `replicas.max`) a runtime 0.12-0.55 s past an even second, or too long
# for any deadline (module docstring).
LARGE = {"name": "large", "workGpuSeconds": 4.3, "quality": 1.0}
BRIEF = {"name": "brief", "workGpuSeconds": 4.15, "quality": 0.6}
THOROUGH = {"name": "thorough", "workGpuSeconds": 4.45, "quality": 1.0}
HUGE = {"name": "huge", "workGpuSeconds": 40.0, "quality": 1.0}
BELOW = 0.7


@dataclass(frozen=True)
class Design:
    name: str
    model: str
    initial: float
    decay_per_h: float
    configs: tuple[Mapping[str, Any], ...] = (BRIEF, THOROUGH)
    max_replicas: int = 1
    offset_s: float = 0.1
    triggered: bool = False
    cron: bool = False

    def start(self, origin: float) -> float:
        """Periodic windows open just after a round (a cron CTJ's open at its firings
        from then on); a triggered CTJ starts so that its first trigger (the
        closed-form crossing of `BELOW`) falls just after one too."""
        if not self.triggered:
            return origin + self.offset_s
        rate = self.decay_per_h / 3600
        crossing = math.log((self.initial - FLOOR) / (BELOW - FLOOR)) / rate
        return origin + ROUND_S + (self.offset_s - crossing) % ROUND_S


DESIGNS = (
    Design("a-slow", "A100", 0.75, 36, max_replicas=2),
    Design("a-mid", "A100", 0.6, 72, max_replicas=2),
    Design("a-fast", "A100", 0.45, 108, max_replicas=2),
    Design("a-low", "A100", 0.35, 54, max_replicas=2),
    Design("a-hopeless", "A100", 0.5, 72, (HUGE,), 4),
    Design("h-slow", "H100", 0.7, 54, (LARGE,), 2, offset_s=2.1),
    Design("h-mid", "H100", 0.55, 90, (LARGE,), 2, offset_s=2.1),
    Design("h-fast", "H100", 0.4, 144, (LARGE,), 2, offset_s=2.1),
    Design("h-low", "H100", 0.3, 36, (LARGE,), 2, offset_s=2.1),
    Design("h-ceiling", "H100", CEILING, 0, (LARGE,), 2, offset_s=2.1),
    Design("v-quick", "V100", 0.9, 360, triggered=True),
    Design("v-slow", "V100", 0.85, 252, triggered=True),
    Design("v-low", "V100", 0.8, 540, triggered=True),
    Design("c-slow", "T4", 0.7, 45, max_replicas=2, cron=True),
    Design("c-mid", "T4", 0.55, 81, max_replicas=2, cron=True),
    Design("c-fast", "T4", 0.4, 126, max_replicas=2, cron=True),
)
Key = tuple[str, int]
"""(CTJ name, window index)."""
Verdict = tuple[str, str, int]
"""(outcome, config, replicas) of one window."""
Opened = tuple[float, float]
"""When a window opened (seconds after the origin) and its model's accuracy then."""


def manifest(design: Design, origin: float) -> dict[str, Any]:
    body = ctj_manifest(
        design.name,
        window_s=WINDOW_S,
        deadline_s=DEADLINE_S,
        # A triggered stream's windows pace it: one more lets the 20th trigger's
        # deadline fall inside it in the simulator too.
        windows=WINDOWS + 1 if design.triggered else WINDOWS,
        runtime=None,
        replicas=1,
        gpu_models=(design.model,),
    )
    spec = body["spec"]
    spec["replicas"]["max"] = design.max_replicas
    spec["resources"]["gpuTypes"] = [{"model": design.model, "relativeThroughput": 1.0}]
    spec["retrain"]["startTime"] = now_rfc3339(design.start(origin), micro=True)
    spec["retrain"]["configs"] = [dict(c) for c in design.configs]
    if design.triggered:
        spec["retrain"]["trigger"] = {"below": BELOW, "minGapSeconds": WINDOW_S}
    if design.cron:
        del spec["retrain"]["windowSeconds"]
        spec["retrain"].update(schedule=cron_schedule(origin), deadlineSeconds=CRON_DEADLINE_S)
    spec["accuracy"] = {
        "ceiling": CEILING,
        "floor": FLOOR,
        "decayPerHour": design.decay_per_h,
        "halfGainGpuSeconds": HALF_GAIN,
        "initial": design.initial,
    }
    spec["podMetadata"] = {"annotations": {SIMULATED_RUNTIME: "true"}}
    spec["historyLimit"] = 0
    return body


def cron_schedule(origin: float) -> str:
    """The `c-*` CTJs' schedule: `CRON_OFFSETS` after each minute of the origin, as the
    seconds field of the wall clock they fire by."""
    seconds = sorted((int(origin) + offset) % 60 for offset in CRON_OFFSETS)
    return f"{','.join(map(str, seconds))} * * * * *"


def simulated(
    policy: str, ctjs: list[dict[str, Any]], nodes: list[NodeSpec], origin: float
) -> tuple[dict[Key, Verdict], dict[Key, Opened]]:
    """Each window's verdict when the simulator replays the recorded CTJs and nodes, and
    when it opened from what accuracy."""
    streams = recorded_streams(map(ctj_from_json, ctjs), origin)
    sim = ContinualRun(nodes, streams, make_policy(policy, {"realloc_s": ROUND_S}))
    sim.run()
    col = {name: i for i, name in enumerate(STREAM_COLUMNS)}
    verdicts: dict[Key, Verdict] = {}
    opened: dict[Key, Opened] = {}
    for row in sim.rows:
        status = str(row[col["status"]])
        name = str(row[col["stream_id"]]).split("/", 1)[1]
        key = (name, int(_number(row[col["window"]])))
        opened[key] = (
            round(_number(row[col["start_s"]]), 3),
            round(_number(row[col["acc_start"]]), 4),
        )
        if status == "none":  # at its ceiling: nothing to retrain, no pods
            verdict = ("Completed", "", 0)
        else:
            outcome = "Completed" if status == "completed" else "Missed"
            verdict = (outcome, str(row[col["config"]]), int(_number(row[col["replicas"]])))
        verdicts[key] = verdict
    return verdicts, opened


def _number(value: object) -> float:
    assert isinstance(value, int | float), value
    return float(value)


@dataclass
class LiveRun:
    ctjs: list[dict[str, Any]]
    outcomes: dict[Key, str]
    recorder: TraceRecorder
    nodes: list[NodeSpec]

    def verdicts(self) -> dict[Key, Verdict]:
        configs: dict[Key, str] = {}
        bound: dict[Key, set[str]] = {}
        for life in self.recorder.lives.values():
            pod = life.pod
            name, window = pod.labels.get(NAME_LABEL), pod.labels.get(WINDOW_LABEL)
            if pod.namespace != NAMESPACE or name is None or window is None:
                continue
            key = (name, int(window))
            configs[key] = pod.annotations.get(CONFIG, "")
            if life.started is not None:
                bound.setdefault(key, set()).add(pod.name)
        return {
            key: (outcome, configs.get(key, ""), len(bound.get(key, ())))
            for key, outcome in self.outcomes.items()
        }

    def opened(self, origin: float) -> dict[Key, Opened]:
        """When each window with pods opened and from what accuracy, by its pods."""
        out: dict[Key, Opened] = {}
        for life in self.recorder.lives.values():
            labels, notes = life.pod.labels, life.pod.annotations
            if NAME_LABEL in labels and ACC_START in notes:
                start = float(notes[WINDOW_START]) - origin
                key = (labels[NAME_LABEL], int(labels[WINDOW_LABEL]))
                out[key] = (round(start, 3), round(float(notes[ACC_START]), 4))
        return out


async def live(env: CtjEnvironment, policy: str, log: Path, out: Path) -> tuple[LiveRun, float]:
    """The CTJs run by the controller as deployed; returns the run and its origin."""
    admin = Admin(str(env.plane.admin_kubeconfig))
    recorder = TraceRecorder(WholeGpu())
    informers = [
        Informer(admin.api, "nodes", "/api/v1/nodes", recorder),
        Informer(admin.api, "pods", "/api/v1/pods", recorder),
    ]
    tasks = [asyncio.create_task(i.run()) for i in informers]
    serve = ServeProcess(
        env, log, policy, (f"--round-seconds={ROUND_S}", f"--option=realloc_s={ROUND_S}")
    )
    try:
        await admin.create_nodes(NODES)
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in informers)), 30)
        await serve.until_ready()
        # On the rounds' grid: the controller's rounds then fall at the simulator's.
        origin = ROUND_S * math.ceil((time.time() + LEAD_S) / ROUND_S)
        for design in DESIGNS:
            await create_ctj(admin.api, manifest(design, origin))
        outcomes = await _outcomes(admin, serve, origin)
        assert serve.stop() == 0
        recorder.write(out)
        ctjs, _ = await admin.api.list_all(CTJS)
        nodes = read_nodes(out / NODES_FILE)
        return LiveRun(ctjs, outcomes, recorder, nodes), origin
    finally:
        serve.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await admin.close()


async def _outcomes(admin: Admin, serve: ServeProcess, origin: float) -> dict[Key, str]:
    """Every window's outcome, gathered from the CTJs' status history (its last five)
    until each CTJ has recorded `WINDOWS`."""
    outcomes: dict[Key, str] = {}
    last = origin + WINDOWS * WINDOW_S + 5 + DEADLINE_S
    while True:
        assert serve.proc.poll() is None, serve.log_path.read_text()[-3000:]
        items, _ = await admin.api.list_all(CTJS)
        for item in items:
            for entry in (item.get("status") or {}).get("history") or ():
                outcomes[(item["metadata"]["name"], int(entry["index"]))] = entry["outcome"]
        recorded = [int((i.get("status") or {}).get("windowsRecorded", 0)) for i in items]
        if len(recorded) == len(DESIGNS) and min(recorded) >= WINDOWS:
            return {k: v for k, v in outcomes.items() if k[1] < WINDOWS}
        assert time.time() < last + 60, f"windows recorded so far: {sorted(recorded)}"
        await asyncio.sleep(2.0)


@pytest.mark.parametrize("policy", ["edf", "thief"])
def test_window_outcomes_configs_and_replicas_agree_with_the_simulator_over_many_windows(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
    policy: str,
) -> None:
    result: list[tuple[LiveRun, float]] = []

    async def scenario(_admin: Admin) -> None:
        paths = (tmp_path / "serve.log", tmp_path / "recording")
        result.append(await live(ctj_env, policy, *paths))

    started = time.monotonic()
    run(ctj_env, scenario)
    ((recorded, origin),) = result
    wall_s = time.monotonic() - started
    sim, sim_opened = simulated(policy, recorded.ctjs, recorded.nodes, origin)
    wanted = {(d.name, i) for d in DESIGNS for i in range(WINDOWS)}
    assert wanted <= set(sim), sorted(wanted - set(sim))[:5]
    # Not vacuous: both outcomes, both configs of a pair, shares of one to two GPUs.
    verdicts = {sim[k] for k in wanted}
    assert {v[0] for v in verdicts} == {"Completed", "Missed"}
    assert {"brief", "thorough"} <= {v[1] for v in verdicts}
    assert {0, 1, 2} <= {v[2] for v in verdicts}
    cron = [d.name for d in DESIGNS if d.cron]
    assert {sim[(n, i)][0] for n in cron for i in range(WINDOWS)} == {"Completed", "Missed"}
    starts = [[sim_opened[(n, i)][0] for i in range(WINDOWS)] for n in cron]
    assert {b - a for s in starts for a, b in itertools.pairwise(s)} == {8, 10, 12}
    live_verdicts = recorded.verdicts()
    assert set(live_verdicts) == wanted
    differ = {k: (live_verdicts[k], sim[k]) for k in sorted(wanted) if live_verdicts[k] != sim[k]}
    live_opened = recorded.opened(origin)
    first = {k: (live_opened.get(k), sim_opened.get(k)) for k in list(differ)[:8]}
    assert not differ, (
        f"{len(differ)} of {len(wanted)} windows differ (live, simulated): {differ}; "
        f"opened (start, accuracy) live and simulated: {first}"
    )
    print(f"{policy}: {len(wanted)} windows agree; live run {wall_s:.0f} s")
