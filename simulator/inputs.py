"""Turn command-line choices into jobs and nodes: a trace file, a recorded trace directory
(`gpufleet controller record`) or the embedded synthetic default, and a cluster file, a
named cluster, or `--gpus N` of 8-GPU nodes."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies import JobSpec, NodeSpec
from traces import FORMATS, TraceError, load_jobs, load_nodes
from traces.canonical import JOBS_FILE, NODES_FILE, recording_end
from traces.synthetic import SyntheticSpec, default_cluster, generate_jobs, homogeneous_cluster

DEFAULT_TRACE = "synthetic"
DEFAULT_CLUSTER = "default-64"


@dataclass(frozen=True)
class Inputs:
    jobs: list[JobSpec]
    nodes: list[NodeSpec]
    trace_label: str
    cluster_label: str
    horizon_s: float | None = None
    """Where the trace says a replay ends (a recording's end); `--horizon` overrides it."""


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload and cluster")
    group.add_argument(
        "--trace",
        metavar="PATH",
        help="job trace file, or a directory `controller record` wrote (its jobs.csv, "
        "nodes.csv, and recording end as the horizon); without it a seeded synthetic "
        "trace is generated",
    )
    group.add_argument(
        "--format",
        default="canonical",
        choices=sorted(FORMATS),
        help="trace format (default: canonical)",
    )
    group.add_argument(
        "--jobs",
        type=int,
        default=SyntheticSpec.num_jobs,
        help="jobs in the synthetic trace (default: %(default)s)",
    )
    group.add_argument(
        "--rate",
        type=float,
        default=SyntheticSpec.jobs_per_hour,
        help="synthetic arrivals per hour (default: %(default)s)",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="FILE|NAME", help="cluster CSV or a named cluster")
    where.add_argument("--gpus", type=int, help="homogeneous cluster of N GPUs on 8-GPU nodes")
    group.add_argument(
        "--scale", type=int, default=1, help="replicate a named cluster k times (default: 1)"
    )


def load_inputs(args: argparse.Namespace, job_mode: str | None = None) -> Inputs:
    """Jobs and nodes the arguments name; `job_mode` forces every job of a Sia workload
    into that category (`simulator.semantics` decides it from the policy)."""
    if args.trace and Path(args.trace).is_dir():
        return _trace_directory(args, Path(args.trace))
    nodes, cluster_label = _cluster(args)
    if args.trace:
        jobs = load_jobs(args.trace, args.format, **_reader_options(args, job_mode))
        return Inputs(jobs, nodes, str(args.trace), cluster_label)
    spec = SyntheticSpec(num_jobs=args.jobs, jobs_per_hour=args.rate)
    jobs = generate_jobs(spec, seed=args.seed)
    label = f"{DEFAULT_TRACE}(jobs={args.jobs},rate={args.rate:g}/h)"
    return Inputs(jobs, nodes, label, cluster_label)


def _trace_directory(args: argparse.Namespace, directory: Path) -> Inputs:
    """jobs.csv, and nodes.csv unless `--cluster` or `--gpus` names another cluster."""
    if args.format != "canonical":
        raise TraceError(directory, f"a directory is read as a canonical trace, not {args.format}")
    own_cluster = args.cluster is None and args.gpus is None
    wanted = [JOBS_FILE, NODES_FILE] if own_cluster else [JOBS_FILE]
    missing = [name for name in wanted if not (directory / name).is_file()]
    if missing:
        raise TraceError(
            directory,
            f"no {' or '.join(missing)} in this directory (a trace directory, as "
            f"`controller record` writes it, holds {JOBS_FILE} and {NODES_FILE})",
        )
    if own_cluster:
        nodes, cluster_label = load_nodes(directory / NODES_FILE), str(directory / NODES_FILE)
    else:
        nodes, cluster_label = _cluster(args)
    jobs = load_jobs(directory / JOBS_FILE, "canonical")
    return Inputs(jobs, nodes, str(directory), cluster_label, recording_end(directory))


def _reader_options(args: argparse.Namespace, job_mode: str | None) -> dict[str, Any]:
    if args.format == "gavel":
        return {"num_jobs": args.jobs, "jobs_per_hour": args.rate, "seed": args.seed}
    if args.format == "sia":
        return {"mode": job_mode}
    return {}


def _cluster(args: argparse.Namespace) -> tuple[list[NodeSpec], str]:
    if args.gpus is not None:
        if args.gpus < 1:
            raise ValueError("--gpus must be at least 1")
        return homogeneous_cluster(args.gpus), f"homogeneous-{args.gpus}"
    if not args.cluster or args.cluster == DEFAULT_CLUSTER:
        return default_cluster(), DEFAULT_CLUSTER
    if Path(args.cluster).exists():
        return load_nodes(args.cluster), str(args.cluster)
    return named_cluster(args.cluster, args.scale), args.cluster


def named_cluster(name: str, scale: int = 1) -> list[NodeSpec]:
    """Clusters defined in `simulator.clusters` (when present), else an error naming them."""
    try:
        module = importlib.import_module("simulator.clusters")
    except ModuleNotFoundError:
        raise ValueError(f"no cluster file or named cluster {name!r}") from None
    nodes: list[NodeSpec] = module.named_cluster(name, scale)
    return nodes
