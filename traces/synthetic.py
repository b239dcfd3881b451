"""Seeded synthetic workloads and clusters: the embedded default needs no data file.

Jobs follow Gavel's mixture (reference `gavel.md` §6): Poisson arrivals; duration on the
fastest GPU 60·10^U(1.5, 3) s with probability 0.8, else 60·10^U(3, 4) s; 1/2/4/8 GPUs
with probability 0.7/0.1/0.15/0.05. A share of single-GPU jobs asks for a fraction of a
GPU instead, as inference-style and small training jobs do in the openb trace. Each job
runs at a model-specific speed: the fastest model does its work in the sampled duration,
slower ones take proportionally longer (per-job speed ratios vary around the model's
typical ratio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from policies import JobSpec, ModelThroughput, NodeSpec, TaskRequest

SIZES = (1, 2, 4, 8)
SIZE_PROBS = (0.7, 0.1, 0.15, 0.05)
SHARE_SIZES = (250, 500, 750)


@dataclass(frozen=True)
class SyntheticSpec:
    num_jobs: int = 300
    jobs_per_hour: float = 2.5
    sharing_fraction: float = field(
        default=0.2, metadata={"help": "share of 1-GPU jobs asking for a GPU fraction"}
    )
    relative_speed: tuple[tuple[str, float], ...] = (("A100", 1.0), ("V100", 0.5))
    """GPU models and their typical speed relative to the fastest."""
    cpu_per_gpu_milli: int = 8000
    mem_per_gpu_mib: int = 32768


def generate_jobs(spec: SyntheticSpec, seed: int = 0) -> list[JobSpec]:
    if spec.num_jobs < 1 or spec.jobs_per_hour <= 0:
        raise ValueError("need at least one job and a positive arrival rate")
    rng = np.random.default_rng(seed)
    n = spec.num_jobs
    gaps = rng.exponential(3600.0 / spec.jobs_per_hour, size=n)
    submits = np.cumsum(gaps) - gaps[0]
    long_job = rng.random(n) >= 0.8
    exponent = np.where(long_job, rng.uniform(3, 4, n), rng.uniform(1.5, 3, n))
    durations = 60.0 * 10.0**exponent
    sizes = rng.choice(SIZES, p=SIZE_PROBS, size=n)
    shares = rng.random(n) < spec.sharing_fraction
    share_milli = rng.choice(SHARE_SIZES, size=n)
    jitter = rng.uniform(0.8, 1.25, size=(n, len(spec.relative_speed)))
    # Python lists, read element by element: indexing numpy arrays a million times (and
    # `round` of numpy floats) was most of generating a 1M-job trace.
    models = [model for model, _ in spec.relative_speed]
    ratios = np.array([ratio for _, ratio in spec.relative_speed])
    speeds = np.where(ratios < 1.0, np.minimum(1.0, ratios * jitter), 1.0).tolist()
    rows = zip(
        sizes.tolist(),
        shares.tolist(),
        share_milli.tolist(),
        submits.tolist(),
        durations.tolist(),
        speeds,
        strict=True,
    )
    tasks: dict[tuple[int, int], TaskRequest] = {}
    jobs = []
    for i, (gpus, share, share_size, submit, duration, job_speeds) in enumerate(rows):
        milli = share_size if gpus == 1 and share else 1000
        task = tasks.get((gpus, milli))
        if task is None:
            task = tasks[gpus, milli] = _task(spec, gpus, milli)
        jobs.append(
            JobSpec(
                id=f"job-{i:05d}",
                submit_time=round(submit, 3),
                task=task,
                work=ModelThroughput(
                    round(duration, 3), dict(zip(models, job_speeds, strict=True))
                ),
            )
        )
    return jobs


def _task(spec: SyntheticSpec, gpus: int, milli: int) -> TaskRequest:
    """A job's task: CPU and memory per GPU, half a GPU's for a share."""
    cpu = spec.cpu_per_gpu_milli * gpus if milli == 1000 else spec.cpu_per_gpu_milli // 2
    mem = spec.mem_per_gpu_mib * gpus if milli == 1000 else spec.mem_per_gpu_mib // 2
    return TaskRequest(cpu_milli=cpu, mem_mib=mem, num_gpus=gpus, gpu_milli=milli)


def homogeneous_cluster(
    num_gpus: int, gpus_per_node: int = 8, model: str = "V100"
) -> list[NodeSpec]:
    """`num_gpus` GPUs on 8-GPU nodes (the last node takes the remainder)."""
    if num_gpus < 1:
        raise ValueError("a cluster needs at least one GPU")
    nodes: list[NodeSpec] = []
    left = num_gpus
    while left > 0:
        gpus = min(gpus_per_node, left)
        nodes.append(
            NodeSpec(
                name=f"node-{len(nodes):04d}",
                cpu_milli=96_000 * gpus // gpus_per_node,
                mem_mib=786_432 * gpus // gpus_per_node,
                gpus=gpus,
                gpu_model=model,
                rack=f"rack-{len(nodes) // 16}",
            )
        )
        left -= gpus
    return nodes


def mixed_cluster(
    num_nodes: int, models: Sequence[str] = ("A100", "V100"), gpus_per_node: int = 8
) -> list[NodeSpec]:
    """`num_nodes` 8-GPU nodes, the models in turn (node i has `models[i % len(models)]`),
    16 nodes a rack: the large mixed clusters of scale runs."""
    if num_nodes < 1 or not models:
        raise ValueError("a mixed cluster needs at least one node and one GPU model")
    width = len(str(num_nodes - 1))
    return [
        NodeSpec(
            name=f"node-{i:0{width}d}",
            cpu_milli=96_000,
            mem_mib=786_432,
            gpus=gpus_per_node,
            gpu_model=models[i % len(models)],
            rack=f"rack-{i // 16}",
        )
        for i in range(num_nodes)
    ]


def default_cluster() -> list[NodeSpec]:
    """The embedded default: 64 GPUs, four 8-GPU A100 nodes and four 8-GPU V100 nodes."""
    fast = homogeneous_cluster(32, model="A100")
    slow = homogeneous_cluster(32, model="V100")
    renamed = [
        NodeSpec(f"a100-{i}", n.cpu_milli, n.mem_mib, n.gpus, n.gpu_model, rack="rack-0")
        for i, n in enumerate(fast)
    ] + [
        NodeSpec(f"v100-{i}", n.cpu_milli, n.mem_mib, n.gpus, n.gpu_model, rack="rack-1")
        for i, n in enumerate(slow)
    ]
    return renamed
