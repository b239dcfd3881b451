"""A snapshot replayed forward: per policy and per sample one simulation, then the
percentiles of every pending job's start and finish.

The replay starts at the snapshot (t = 0). Every pod running then is an occupant of its
node (`traces.canonical.Pin`) for its remaining time, so no policy moves it; pending jobs
arrive at t = 0 oldest first (their queue order); each ContinualTrainingJob's later
windows arrive when they open. Uncertain remaining times are drawn once per sample and
shared by every policy (common random numbers: policies differ by their decisions, not
their luck). Without any uncertain time one simulation per policy answers for all samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from policies import ClusterState, FixedDuration, JobSpec, NodeSpec, TaskRequest, make_policy
from policies.base import request_key
from policies.gpu_models import node_model
from policies.placement import fits_empty_cluster
from simulator.engine import EngineOptions, Simulation
from simulator.whatif.remaining import RemainingTime, RemainingTimes, Source
from traces.canonical import PIN_KEY, Pin
from traces.errors import TraceError
from traces.snapshot import ClusterSnapshot, Shape, SnapPending

OCCUPANT = "running"
PENDING = "pending"
WINDOW = "ctj-window"
ADDED = "added"
GRID_POINTS = 61
"""Points of the queue-length and allocation curves over the horizon."""


@dataclass(frozen=True, slots=True)
class Item:
    """One job of the replay, with its duration still to be drawn."""

    spec: JobSpec
    remaining: RemainingTime
    kind: str
    deadline_s: float | None = None


@dataclass(frozen=True)
class Plan:
    nodes: tuple[NodeSpec, ...]
    items: tuple[Item, ...]
    horizon_s: float
    resolution_s: float = 0.0
    """Remaining times are rounded up to a multiple of this (0: exact). Completions then
    coincide and share scheduling passes: a forecast of thousands of jobs runs several
    times faster, and each prediction moves by less than one step per job ahead of it."""
    epoch_s: float = 0.0
    """Unix time of the snapshot: a round-based policy's rounds then fall where the live
    controller's do (on the Unix clock's multiples of its round)."""

    @property
    def uncertain(self) -> bool:
        return any(item.remaining.uncertain for item in self.items)

    def durations(self, sample: int, seed: int) -> np.ndarray:
        """Every job's duration in `sample` (rounded to the resolution)."""
        rng = np.random.default_rng([seed, sample])
        return np.array([self._rounded(item.remaining.sample(rng)) for item in self.items])

    def jobs(self, sample: int, seed: int) -> list[JobSpec]:
        durations = self.durations(sample, seed).tolist()
        return [
            replace(item.spec, work=FixedDuration(seconds))
            for item, seconds in zip(self.items, durations, strict=True)
        ]

    def _rounded(self, seconds: float) -> float:
        step = self.resolution_s
        return math.ceil(seconds / step) * step if step > 0 else seconds

    @property
    def forecast_items(self) -> list[Item]:
        """The jobs a forecast reports: all but the occupants."""
        return [item for item in self.items if item.kind != OCCUPANT]

    @cached_property
    def never_fits(self) -> list[str]:
        """The reported jobs no node could take even with the cluster empty (more GPUs
        than any node has, a GPU model or label none carries): they never start, under
        any policy, whatever the horizon. Worked out once: the report and the command
        both read it."""
        empty, fits = ClusterState(self.nodes), {}
        for item in self.forecast_items:  # one test per request shape: pods are many, shapes few
            key = request_key(item.spec)
            if key not in fits:
                fits[key] = fits_empty_cluster(item.spec, empty)
        return [item.spec.id for item in self.forecast_items if not fits[request_key(item.spec)]]


def plan_forecast(
    snapshot: ClusterSnapshot,
    horizon_s: float,
    added: Sequence[SnapPending] = (),
    resolution_s: float = 0.0,
) -> Plan:
    """The replay's nodes and jobs; `TraceError` names the entry a job cannot be made of."""
    if not horizon_s > 0 or not math.isfinite(horizon_s):
        raise ValueError(f"--horizon must be a finite time > 0, got {horizon_s!r}")
    times = RemainingTimes(snapshot)
    nodes = tuple(_node(snapshot, i) for i in range(len(snapshot.nodes)))
    names = {n.name: n for n in nodes}
    items = [_occupant(snapshot, i, names, times) for i in range(len(snapshot.running))]
    queue = sorted(range(len(snapshot.pending)), key=lambda i: -snapshot.pending[i].age_s)
    items += [_pending(snapshot.pending[i], f"pending[{i}]", times, PENDING) for i in queue]
    items += [_pending(job, f"added[{i}]", times, ADDED) for i, job in enumerate(added)]
    items += _windows(snapshot, horizon_s, times)
    seen: set[str] = set()
    for item in items:
        if item.spec.id in seen:
            raise TraceError("<snapshot>", f"two jobs are named {item.spec.id!r}", field="id")
        seen.add(item.spec.id)
    if not 0 <= resolution_s < horizon_s:
        raise ValueError(f"--resolution must be >= 0 and below the horizon, got {resolution_s!r}")
    return Plan(nodes, tuple(items), horizon_s, resolution_s, snapshot.taken_at_unix)


def _node(snapshot: ClusterSnapshot, i: int) -> NodeSpec:
    node = snapshot.nodes[i]
    try:
        return NodeSpec(
            name=node.name,
            cpu_milli=node.cpu_milli,
            mem_mib=node.mem_mib,
            gpus=node.gpus,
            gpu_model=node_model(node.gpu_model) if node.gpus else "",
            rack=node.rack,
            gpu_product=node.gpu_model if node.gpus else "",
        )
    except ValueError as err:
        raise TraceError("<snapshot>", str(err), field=f"nodes[{i}].gpu_model") from None


def _task(where: str, cpu: int, mem: int, gpus: int, milli: int) -> TaskRequest:
    try:
        return TaskRequest(cpu, mem, gpus, milli)
    except ValueError as err:
        raise TraceError("<snapshot>", str(err), field=f"{where}.gpu_milli") from None


def _occupant(
    snapshot: ClusterSnapshot, i: int, nodes: dict[str, NodeSpec], times: RemainingTimes
) -> Item:
    pod = snapshot.running[i]
    where = f"running[{i}]"
    node = nodes.get(pod.node)
    if node is None:
        raise TraceError(
            "<snapshot>", f"node {pod.node!r} is not among the nodes", field=f"{where}.node"
        )
    if pod.gpus is not None and (
        len(pod.gpus) != pod.num_gpus or any(g >= node.gpus for g in pod.gpus)
    ):
        raise TraceError(
            "<snapshot>",
            f"{list(pod.gpus)} is not {pod.num_gpus} GPU indices of node {node.name} "
            f"({node.gpus} GPUs)",
            field=f"{where}.gpus",
        )
    task = _task(where, pod.cpu_milli, pod.mem_mib, pod.num_gpus, pod.gpu_milli)
    shape = Shape(pod.replicas, pod.num_gpus, pod.gpu_milli if pod.num_gpus else 0)
    remaining = times.estimate(shape, pod.runtime_s, pod.ctj, pod.elapsed_s)
    spec = JobSpec(
        id=pod.id,
        submit_time=0.0,
        task=task,
        work=FixedDuration(1.0),
        kind="pod",
        preemptible=False,
        attributes={PIN_KEY: Pin(pod.node, pod.gpus or None)},
    )
    return Item(spec, remaining, OCCUPANT)


def _pending(job: SnapPending, where: str, times: RemainingTimes, kind: str) -> Item:
    task = _task(where, job.cpu_milli, job.mem_mib, job.num_gpus, job.gpu_milli)
    shape = Shape(job.replicas, job.num_gpus, job.gpu_milli if job.num_gpus else 0)
    spec = JobSpec(
        id=job.id,
        submit_time=0.0,
        task=task,
        work=FixedDuration(1.0),
        replicas=job.replicas,
        allowed_models=frozenset(job.allowed_models) or None,
        priority=job.priority,
        kind="pod",
        preemptible=job.preemptible,
    )
    return Item(spec, times.estimate(shape, job.runtime_s, job.ctj), kind, job.deadline_s)


def _windows(snapshot: ClusterSnapshot, horizon_s: float, times: RemainingTimes) -> list[Item]:
    items = []
    for i, ctj in enumerate(snapshot.ctjs):
        task = _task(f"ctjs[{i}]", ctj.cpu_milli, ctj.mem_mib, ctj.num_gpus, ctj.gpu_milli)
        shape = Shape(ctj.replicas, ctj.num_gpus, ctj.gpu_milli)
        for window in ctj.windows:
            if not 0 <= window.start_s < horizon_s:
                continue
            spec = JobSpec(
                id=f"{ctj.name}-w{window.index}",
                submit_time=window.start_s,
                task=task,
                work=FixedDuration(1.0),
                replicas=ctj.replicas,
                allowed_models=frozenset(ctj.allowed_models) or None,
                kind="pod",
            )
            remaining = times.estimate(shape, ctj.runtime_s, ctj.name)
            items.append(Item(spec, remaining, WINDOW, window.deadline_s))
    return items


# -- running the samples ----------------------------------------------------------------


@dataclass(frozen=True)
class SampleRun:
    """One simulation: start and finish of each forecast job (inf: not within the
    horizon), and the queue length and allocated GPU % on the grid. `drew_random`: the
    policy drew random numbers (else the run follows from the durations alone)."""

    policy: str
    sample: int
    start: np.ndarray
    finish: np.ndarray
    queue: np.ndarray
    alloc_pct: np.ndarray
    drew_random: bool = True


@dataclass(frozen=True)
class PolicySpec:
    name: str
    options: dict[str, Any]


def run_sample(plan: Plan, policy: PolicySpec, sample: int, seed: int) -> SampleRun:
    jobs = plan.jobs(sample, seed)
    options = EngineOptions(seed=seed + sample, horizon_s=plan.horizon_s, epoch_s=plan.epoch_s)
    sim = Simulation(plan.nodes, jobs, make_policy(policy.name, policy.options), options)
    untouched = sim.ctx.rng.bit_generator.state
    recorder = sim.run()
    drew_random = sim.ctx.rng.bit_generator.state != untouched
    rows = {row[0]: row for row in recorder.jobs}
    ids = [item.spec.id for item in plan.forecast_items]
    start = np.array([_time(rows[j][3]) if j in rows else math.inf for j in ids])
    finish = np.array(
        [_time(rows[j][4]) if j in rows and rows[j][12] == "completed" else math.inf for j in ids]
    )
    grid = np.linspace(0.0, plan.horizon_s, GRID_POINTS)
    timeline = np.array([row[:4] for row in recorder.timeline], dtype=float).reshape(-1, 4)
    at = np.searchsorted(timeline[:, 0], grid, side="right") - 1
    known = at >= 0
    queue = np.where(known, timeline[np.maximum(at, 0), 3], 0.0)
    alloc = np.where(known, timeline[np.maximum(at, 0), 1], 0.0)
    return SampleRun(policy.name, sample, start, finish, queue, alloc, drew_random)


def _time(value: object) -> float:
    return math.inf if value is None else float(value)  # type: ignore[arg-type]


Cell = tuple[int, int]
"""(index of the policy, sample)."""


def run_samples(
    plan: Plan,
    policies: Sequence[PolicySpec],
    samples: int,
    seed: int,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[SampleRun]:
    """Every (policy, sample) run, in that order; simulations in `workers` processes
    (default: one per core). With no uncertain time, one run per policy. Samples that
    drew the same durations share one simulation where the policy drew no random
    numbers in it (its run then follows from the durations alone; a policy that did
    draw is simulated again with each sample's seed)."""
    count = samples if plan.uncertain else 1
    groups = same_durations(plan, count, seed)
    covered = 0

    def report(run: SampleRun, size: int) -> None:
        nonlocal covered
        covered += 1 if run.drew_random else size
        if progress is not None:
            progress(covered)

    size = {g[0]: len(g) for g in groups}
    first = [(p, g[0]) for p in range(len(policies)) for g in groups]
    done = _simulate(plan, policies, first, seed, workers, lambda c, r: report(r, size[c[1]]))
    again = [(p, s) for p, g0 in first if done[(p, g0)].drew_random for s in _group(groups, g0)]
    done.update(_simulate(plan, policies, again, seed, workers, lambda c, r: report(r, 1)))
    leader = {s: g[0] for g in groups for s in g}
    return [
        done.get((p, s)) or replace(done[(p, leader[s])], sample=s)
        for p in range(len(policies))
        for s in range(count)
    ]


def same_durations(plan: Plan, count: int, seed: int) -> list[list[int]]:
    """Samples 0..count-1 grouped by the durations they drew, each group in order."""
    groups: dict[bytes, list[int]] = {}
    for sample in range(count):
        groups.setdefault(plan.durations(sample, seed).tobytes(), []).append(sample)
    return list(groups.values())


def _group(groups: list[list[int]], leader: int) -> list[int]:
    return next(g[1:] for g in groups if g[0] == leader)


def _simulate(
    plan: Plan,
    policies: Sequence[PolicySpec],
    cells: Sequence[Cell],
    seed: int,
    workers: int | None,
    done: Callable[[Cell, SampleRun], None],
) -> dict[Cell, SampleRun]:
    workers = min(workers or os.cpu_count() or 1, len(cells))
    runs: dict[Cell, SampleRun] = {}
    if workers <= 1:
        for cell in cells:
            runs[cell] = run_sample(plan, policies[cell[0]], cell[1], seed)
            done(cell, runs[cell])
        return runs
    with ProcessPoolExecutor(workers, initializer=_share_plan, initargs=(plan,)) as pool:
        futures = [(c, pool.submit(_run_shared, policies[c[0]], c[1], seed)) for c in cells]
        for cell, future in futures:
            runs[cell] = future.result()
            done(cell, runs[cell])
    return runs


_SHARED: list[Plan] = []
"""The plan in a worker process, set once by the pool's initializer (not per task)."""


def _share_plan(plan: Plan) -> None:
    _SHARED[:] = [plan]


def _run_shared(policy: PolicySpec, sample: int, seed: int) -> SampleRun:
    return run_sample(_SHARED[0], policy, sample, seed)


def sources_of(plan: Plan) -> list[Source]:
    return [item.remaining.source for item in plan.forecast_items]
