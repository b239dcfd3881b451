"""`experiment: hetero` in a sweep spec: the cells of `gpufleet experiment hetero`
(`hetero.run_workload`) over the spec's traces, cluster, policies and
seeds.

    experiment: hetero
    traces:
      - path: sia-workloads/saturn/*.csv     # Sia workloads, profiles beside them
        format: sia
      - name: gavel-rate-10
        generate: {throughputs: simulation_throughputs.json, jobs: 300, rate: 10, seed: 0}
    cluster: {name: sia-64, scale: 1}
    policies: [sia, gavel, las, fifo]
    seeds: 0
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from policies import NodeSpec, make_policy
from policies.elastic import RIGID
from simulator.experiments.hetero import (
    DEFAULT_GAVEL_FILE,
    SUMMARY_COLUMNS,
    RunOutput,
    Workload,
    WorkloadJobs,
    load_workload,
    parse_window,
    run_workload,
    tables,
    workload_digest,
)
from simulator.sweep.cells import CellOutput, Scalar
from simulator.sweep.spec import SweepExperiment, TraceSource, named_cluster_entry

CELL_METRICS = (*SUMMARY_COLUMNS[2:], "completed", "unfinished", "passes")
"""A cell's metrics: the summary and the counts of the timing table (not its measured
times, which differ from run to run; they are in the cell's `policy_timing.csv`)."""


def run_cell(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> CellOutput:
    """One run as a sweep cell: its metrics, and its rows of the experiment's tables
    (`summary.csv`, `policy_timing.csv`, `jobs.csv`, `rounds.csv`, `timeline.csv`)."""
    output = run_workload(params, inputs)
    return CellOutput(cell_metrics(output), {n: t.encode() for n, t in tables([output]).items()})


def cell_metrics(output: RunOutput) -> dict[str, Scalar]:
    values = (*output.summary[2:], *output.timing[2:5])
    return {name: cast(Scalar, value) for name, value in zip(CELL_METRICS, values, strict=True)}


def _sweep_trace(source: TraceSource) -> WorkloadJobs:
    """A Sia workload file (`format: sia`, profiles beside it as in Sia's repository) or
    a Gavel trace (`generate: {throughputs, jobs, rate, seed, window}`)."""
    if source.path is not None:
        if source.format != "sia":
            raise ValueError("the hetero experiment reads Sia workloads (format: sia)")
        return load_workload(Workload(source.name, source.path), (None, RIGID))
    return load_workload(_gavel_workload(source), ())


def _gavel_workload(source: TraceSource) -> Workload:
    settings = dict(source.generate)
    unknown = sorted(set(settings) - set(GAVEL_SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} ({', '.join(GAVEL_SETTINGS)})")
    settings = {**GAVEL_SETTINGS, **settings}
    window = settings["window"]
    rate = float(settings["rate"])
    if rate <= 0:
        raise ValueError("rate must be positive")
    return Workload(
        source.name,
        source.resolve(settings["throughputs"]),
        None,
        int(settings["seed"]),
        int(settings["jobs"]),
        rate,
        None if window is None else parse_window(str(window)),
    )


def _sweep_digest(source: TraceSource) -> str:
    if source.path is not None:
        return source.digest()
    return workload_digest(_gavel_workload(source))


def _sweep_cluster(entry: Mapping[str, Any], _base: Path) -> tuple[str, list[NodeSpec]]:
    return named_cluster_entry(entry, "sia-64", "hetero")


def _sweep_policy(name: str, options: dict[str, Any]) -> dict[str, Any]:
    make_policy(name, options)  # an unknown name or option fails before any cell runs
    return {"policy": name, "options": options}


GAVEL_SETTINGS: dict[str, Any] = {
    "throughputs": DEFAULT_GAVEL_FILE,
    "jobs": 300,
    "rate": 10.0,
    "seed": 0,
    "window": None,
}
"""A generated Gavel trace's settings in a sweep spec, with `--gavel-*`'s defaults."""

SWEEP_TASK = "simulator.experiments.hetero_sweep:run_cell"
SWEEP = SweepExperiment(
    SWEEP_TASK, {}, CELL_METRICS, _sweep_trace, _sweep_cluster, _sweep_policy, _sweep_digest
)
"""The fields in order: task, settings (none), metrics, and how a trace, the cluster
and a policy are read and a trace keyed."""
