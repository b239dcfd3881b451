"""The `simulate` experiment of a sweep: one engine run per cell (trace × cluster ×
policy × options × seed), its run directory as `gpufleet simulate` writes it, and the
run's summary as the cell's metrics."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policies import JobSpec, NodeSpec, make_policy
from policies.elastic import RIGID
from simulator.compare import TABLE_KEYS
from simulator.inputs import DEFAULT_CLUSTER, named_cluster
from simulator.run import RunConfig, RunResult, simulate
from simulator.semantics import run_semantics
from simulator.sweep.cells import CellOutput
from simulator.sweep.spec import SpecError, SweepExperiment, TraceSource
from traces import load_jobs, load_nodes
from traces.outputs import MARKER
from traces.synthetic import (
    SyntheticSpec,
    default_cluster,
    generate_jobs,
    homogeneous_cluster,
    mixed_cluster,
)

SETTINGS = {"restart_cost_s": None, "horizon_s": None}
"""restart_cost_s None: the trace format's rule (`simulator.semantics`)."""
TraceByMode = dict[str | None, list[JobSpec]]
METRICS = ("gpus", *TABLE_KEYS[1:], "unfinished", "rejected", "scheduling_passes")
GENERATOR_KEYS = {
    "jobs": "num_jobs",
    "rate": "jobs_per_hour",
    "sharing_fraction": "sharing_fraction",
}


def run_cell(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """Simulate one cell; its files are those `gpufleet simulate` writes."""
    result, files = _simulate(params, inputs)
    return CellOutput({key: result.summary[key] for key in METRICS}, files)


def run_cell_keeping_records(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """`run_cell`, with the run's result (its recorder's rows) and its files as the
    payload, for a host that plots them and writes the files itself (`gpufleet compare`)."""
    result, files = _simulate(params, inputs)
    return CellOutput({key: result.summary[key] for key in METRICS}, {}, (result, files))


def _simulate(
    params: Mapping[str, Any], inputs: Mapping[str, Any]
) -> tuple[RunResult, dict[str, bytes]]:
    """The run `gpufleet simulate` would make of these parameters (`run_semantics`: the
    trace format's restart rules and, for Sia workloads, the policy's job category)."""
    options = dict(params["options"])
    policy = make_policy(str(params["policy"]), options)
    trace_format = str(params.get("trace_format", "canonical"))
    semantics = run_semantics(trace_format, policy, params["restart_cost_s"])
    traces: TraceByMode = inputs["trace"]
    config = RunConfig(
        trace=str(params["trace"]),
        trace_format=trace_format,
        cluster=str(params["cluster"]),
        policy=policy.name,
        policy_options=options,
        seed=int(params["seed"]),
        restart_cost_s=semantics.restart_cost_s,
        startup_delay=semantics.startup_delay,
        horizon_s=params["horizon_s"],
    )
    jobs = traces.get(semantics.job_mode, traces[None])
    with tempfile.TemporaryDirectory(prefix="gpufleet-cell-") as tmp:
        result = simulate(config, inputs["cluster"], jobs, policy, Path(tmp) / "run")
        files = {
            path.name: path.read_bytes()
            for path in sorted((Path(tmp) / "run").iterdir())
            if path.name != MARKER
        }
    return result, files


def load_trace(source: TraceSource) -> TraceByMode:
    """The trace's jobs by job category: a Sia workload also as every policy but Sia
    runs it (rigid); other formats only as they are."""
    if source.path is not None:
        if source.format == "sia":
            modes: tuple[str | None, ...] = (None, RIGID)
            return {m: load_jobs(source.path, "sia", mode=m) for m in modes}
        return {None: load_jobs(source.path, source.format)}
    settings = dict(source.generate)
    seed = settings.pop("seed", 0)
    unknown = sorted(set(settings) - set(GENERATOR_KEYS))
    if unknown:
        known = ", ".join([*GENERATOR_KEYS, "seed"])
        raise ValueError(f"unknown generator setting {unknown[0]!r} ({known})")
    spec = SyntheticSpec(**{GENERATOR_KEYS[k]: v for k, v in settings.items()})
    return {None: generate_jobs(spec, seed=int(seed))}


def load_cluster(entry: Mapping[str, Any], base: Path) -> tuple[str, list[NodeSpec]]:
    """`{gpus: N}`, `{file: PATH}`, `{name: NAME, scale: K}` or `{nodes: N, models: [...]}`;
    none of these: the embedded default cluster."""
    kinds = [k for k in ("gpus", "file", "name", "nodes") if k in entry]
    if len(kinds) > 1:
        raise SpecError("cluster", f"give one of gpus, file, name, nodes (got {', '.join(kinds)})")
    kind = kinds[0] if kinds else "name"
    try:
        if kind == "gpus":
            return f"homogeneous-{entry['gpus']}", homogeneous_cluster(int(entry["gpus"]))
        if kind == "file":
            path = Path(entry["file"])
            return str(entry["file"]), load_nodes(path if path.is_absolute() else base / path)
        if kind == "nodes":
            models = tuple(entry.get("models", ("A100", "V100")))
            label = f"mixed-{entry['nodes']}x8-{'-'.join(models)}"
            return label, mixed_cluster(int(entry["nodes"]), models)
        name = str(entry.get("name", DEFAULT_CLUSTER))
        if name == DEFAULT_CLUSTER:
            return name, default_cluster()
        return name, named_cluster(name, int(entry.get("scale", 1)))
    except (TypeError, ValueError) as err:
        raise SpecError(f"cluster.{kind}", str(err)) from None


def policy_params(name: str, options: dict[str, Any]) -> dict[str, Any]:
    make_policy(name, options)  # an unknown name or option fails here, before any cell
    return {"policy": name, "options": options}


SWEEP = SweepExperiment(
    task="simulator.sweep.simulate:run_cell",
    settings=SETTINGS,
    metrics=METRICS,
    load_trace=load_trace,
    load_cluster=load_cluster,
    policy_params=policy_params,
)
