"""The simulator's commands: `gpufleet simulate|compare|policies|experiment`.

`gpufleet.cli` plugs them into the command tree and turns a user's error into one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from policies import make_policy, policy_class, policy_names
from policies.registry import config_help, parse_options
from simulator.compare import format_caveats, format_table, write_comparison
from simulator.experiments import add_executor_arguments, executor_for, experiment_modules
from simulator.inputs import add_input_arguments, load_inputs
from simulator.progress import ProgressBar, add_progress_argument
from simulator.run import RunConfig, RunResult, simulate
from simulator.semantics import SEMANTICS_HELP, run_semantics
from simulator.sweep.cells import Cell, make_cell
from simulator.sweep.runner import run_cells
from traces.outputs import add_force_argument, check_output_dir, output_directory

COMPARE_TASK = "simulator.sweep.simulate:run_cell_keeping_records"


def add_simulator_commands(commands: argparse._SubParsersAction) -> None:
    _add_simulate(commands)
    _add_compare(commands)
    _add_policies(commands)
    _add_experiments(commands)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy config option (repeatable); `gpufleet policies` lists them",
    )
    parser.add_argument(
        "--restart-cost",
        type=float,
        help="restart delay in s for jobs whose trace gives none (default: 30; "
        "`gpufleet policies` says when a first start pays it too)",
    )
    parser.add_argument(
        "--horizon",
        type=float,
        help="stop the clock at this time (s); default: a recorded trace's end, else none",
    )
    add_progress_argument(parser)


def _add_simulate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "simulate",
        help="replay a trace through one policy",
        description="Replay a job trace through one policy and write jobs.parquet, "
        "timeline.parquet, config.json and summary.json. With no arguments it runs the "
        "embedded synthetic trace on the default 64-GPU cluster.",
    )
    _add_run_arguments(parser)
    parser.add_argument("--policy", default="fifo", help="policy name (default: fifo)")
    parser.add_argument(
        "--out", default="out/simulate", help="output directory (default: %(default)s)"
    )
    add_force_argument(parser)
    parser.set_defaults(handler=_simulate)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="run several policies on one trace",
        description="Run several policies on one trace; write one run directory per "
        "policy plus summary.csv and compare.png.",
    )
    _add_run_arguments(parser)
    parser.add_argument(
        "--policies",
        default="fifo,bestfit,las",
        help="comma-separated policy names (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default="out/compare", help="output directory (default: %(default)s)"
    )
    add_executor_arguments(parser, workers=1, progress=False)  # --progress: a run argument
    add_force_argument(parser)
    parser.set_defaults(handler=_compare)


def _add_policies(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "policies", help="list policies and their options", description="List policies."
    )
    parser.set_defaults(handler=_list_policies)


def _add_experiments(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "experiment", help="run a named experiment", description="Run a named experiment."
    )
    names = parser.add_subparsers(title="experiments", metavar="NAME")
    for module in experiment_modules():
        sub = names.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)


def _run_one(args: argparse.Namespace, policy_name: str, out_dir: Path) -> RunResult:
    cls = policy_class(policy_name)
    semantics = run_semantics(args.format if args.trace else "synthetic", cls, args.restart_cost)
    options = semantics.policy_options(cls, parse_options(args.option))
    policy = make_policy(policy_name, options)
    inputs = load_inputs(args, semantics.job_mode)
    config = RunConfig(
        trace=inputs.trace_label,
        trace_format=args.format if args.trace else "synthetic",
        cluster=inputs.cluster_label,
        policy=policy_name,
        policy_options=options,
        seed=args.seed,
        restart_cost_s=semantics.restart_cost_s,
        startup_delay=semantics.startup_delay,
        horizon_s=inputs.horizon_s if args.horizon is None else args.horizon,
    )
    bar = ProgressBar(len(inputs.jobs), policy_name, enabled=args.progress)
    try:
        return simulate(config, inputs.nodes, inputs.jobs, policy, out_dir, bar.update, args.force)
    finally:
        bar.close()


def _simulate(args: argparse.Namespace) -> int:
    check_output_dir(args.out, args.force)  # before the run, not after
    result = _run_one(args, args.policy, Path(args.out))
    print(format_table([result.summary]))
    for line in format_caveats([result.summary]):
        print(line)
    print(f"wrote {result.out_dir}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if not names:
        raise ValueError("--policies names no policy")
    for name in names:
        policy_class(name)
    executor = executor_for(args)
    options = parse_options(args.option)
    cells, inputs = compare_cells(args, names, options)
    out = Path(args.out)
    check_output_dir(out, args.force)
    report = run_cells(cells, inputs, executor, progress=args.progress, label="compare")
    if report.failed:
        raise ValueError(
            f"policy {report.failed[0]['params']['policy']}: {report.failed[0]['error']}"
        )
    runs = [report.payloads[cell.key] for cell in cells]
    results = [result for result, _files in runs]
    with output_directory(out, "compare", args.force) as stage:
        for name, (_result, files) in zip(names, runs, strict=True):
            (stage / name).mkdir()
            for file_name, data in files.items():
                (stage / name / file_name).write_bytes(data)
        write_comparison(stage, results)
    print(format_table([r.summary for r in results]))
    for line in format_caveats([r.summary for r in results]):
        print(line)
    print(f"wrote {out / 'summary.csv'} and {out / 'compare.png'}")
    return 0


def compare_cells(
    args: argparse.Namespace, names: list[str], options: dict[str, str]
) -> tuple[list[Cell], dict[str, Any]]:
    """One sweep cell per policy, and their inputs: the cluster and the trace as each
    policy's run semantics has it loaded (Sia workloads differ by job category)."""
    trace_format = args.format if args.trace else "synthetic"
    inputs: dict[str, Any] = {}
    cells = []
    for name in names:
        semantics = run_semantics(trace_format, make_policy(name, options), args.restart_cost)
        loaded = load_inputs(args, semantics.job_mode)
        inputs[f"trace:{semantics.job_mode}"] = {semantics.job_mode: loaded.jobs, None: loaded.jobs}
        inputs["cluster"] = loaded.nodes
        params = {
            "trace": loaded.trace_label,
            "trace_format": trace_format,
            "cluster": loaded.cluster_label,
            "policy": name,
            "options": options,
            "seed": args.seed,
            "restart_cost_s": args.restart_cost,
            "horizon_s": loaded.horizon_s if args.horizon is None else args.horizon,
        }
        roles = {"trace": f"trace:{semantics.job_mode}", "cluster": "cluster"}
        digests = {roles["trace"]: loaded.trace_label, "cluster": loaded.cluster_label}
        cells.append(make_cell(COMPARE_TASK, params, roles, digests))
    return cells, inputs


def _list_policies(_args: argparse.Namespace) -> int:
    for name in policy_names():
        cls = policy_class(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        doc = doc.splitlines()[0] if doc else ""
        round_s = make_policy(name).round_s  # set from the default config, not the class
        kind = f"rounds of {round_s:g} s" if round_s else "event-driven"
        print(f"{name:12s} {kind:18s} {doc}")
        if cls.defaults_follow:
            print(f"    defaults follow {cls.defaults_follow}")
        for option, default, text in config_help(cls.config_type):
            print(f"    -o {option}=...  (default {default})  {text}")
    print()
    print(textwrap.fill(SEMANTICS_HELP, width=88))
    return 0
