"""`gpufleet traces`: inspect a trace, convert it to the canonical schema, or generate one."""

from __future__ import annotations

import argparse
import importlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from policies import JobSpec
from traces import canonical
from traces.formats import FORMATS, load_jobs
from traces.synthetic import SyntheticSpec, generate_jobs

# Trace kinds beyond `synthetic` that other modules provide: kind → (module, add-args
# function, generate function). Listed by name so `traces` imports none of them eagerly.
EXTRA_KINDS: dict[str, tuple[str, str, str]] = {
    "dlrm-mix": ("traces.rap", "add_generate_arguments", "generate_command"),
    "continual": (
        "traces.continual",
        "add_continual_generate_arguments",
        "generate_continual_trace",
    ),
}


def add_traces_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "traces", help="inspect, convert or generate traces", description="Work with traces."
    )
    sub = parser.add_subparsers(title="actions", metavar="ACTION")

    inspect = sub.add_parser("inspect", help="summarise a trace", description="Summarise a trace.")
    _add_source(inspect)
    inspect.set_defaults(handler=_inspect)

    convert = sub.add_parser(
        "convert",
        help="write a trace in the canonical schema",
        description="Read a trace in any supported format and write the canonical CSV.",
    )
    _add_source(convert)
    convert.add_argument(
        "--out", required=True, help="canonical CSV to write (a file of that name is replaced)"
    )
    convert.set_defaults(handler=_convert)

    generate = sub.add_parser(
        "generate",
        help="generate a seeded synthetic trace",
        description="Generate a seeded synthetic trace in the canonical schema.",
    )
    generate.add_argument(
        "--kind",
        default="synthetic",
        choices=["synthetic", *sorted(EXTRA_KINDS)],
        help="trace family (default: synthetic)",
    )
    generate.add_argument("--jobs", type=int, default=SyntheticSpec.num_jobs, help="jobs")
    generate.add_argument(
        "--rate", type=float, default=SyntheticSpec.jobs_per_hour, help="arrivals per hour"
    )
    generate.add_argument(
        "--sharing",
        type=float,
        default=SyntheticSpec.sharing_fraction,
        help="share of 1-GPU jobs asking for a GPU fraction",
    )
    generate.add_argument("--seed", type=int, default=0, help="random seed")
    generate.add_argument(
        "--out",
        required=True,
        help="file to write (a file of that name is replaced; --kind continual also "
        "writes NAME.batch.csv beside NAME.csv when it has batch jobs)",
    )
    for module, add_args, _ in EXTRA_KINDS.values():
        getattr(importlib.import_module(module), add_args)(generate)
    generate.set_defaults(handler=_generate)


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="trace file")
    parser.add_argument(
        "--format", default="canonical", choices=sorted(FORMATS), help="trace format"
    )


def _inspect(args: argparse.Namespace) -> int:
    jobs = load_jobs(args.path, args.format)
    for line in describe(jobs):
        print(line)
    return 0


def describe(jobs: Sequence[JobSpec]) -> list[str]:
    """Human-readable facts about a trace: size, span, GPU demand and request mix."""
    submits = np.array([j.submit_time for j in jobs])
    gpu_req = sum(j.gpu_milli_total for j in jobs) / 1000
    sizes = Counter(
        "cpu-only" if not j.task.num_gpus else "sharing" if j.task.is_sharing else f"{j.gpus}-gpu"
        for j in jobs
    )
    kinds = Counter(j.kind for j in jobs)
    typed = sum(1 for j in jobs if j.allowed_models is not None)
    lines = [
        f"jobs: {len(jobs)}",
        f"span: {submits.min():.0f} s .. {submits.max():.0f} s",
        f"GPU request (sum): {gpu_req:.1f} GPUs",
        f"GPU-model constrained: {typed} jobs",
        "kinds: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()),
        "requests: " + ", ".join(f"{k} {v}" for k, v in sorted(sizes.items())),
    ]
    return lines


def _convert(args: argparse.Namespace) -> int:
    jobs = load_jobs(args.path, args.format)
    count = canonical.write_jobs(jobs, args.out)
    print(f"wrote {count} jobs to {args.out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    if args.kind in EXTRA_KINDS:
        module, _, generate = EXTRA_KINDS[args.kind]
        result: int = getattr(importlib.import_module(module), generate)(args)
        return result
    spec = SyntheticSpec(num_jobs=args.jobs, jobs_per_hour=args.rate, sharing_fraction=args.sharing)
    count = canonical.write_jobs(generate_jobs(spec, args.seed), args.out)
    print(f"wrote {count} jobs to {args.out}")
    return 0
