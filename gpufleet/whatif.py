"""`gpufleet whatif`: when will the pending jobs start and finish, under each policy?

The command joins two rooms that may not import each other: the controller captures a
live cluster (`controller.whatif.capture`), the simulator forecasts from a snapshot
(`simulator.whatif`). Offline (`--snapshot FILE`) it needs the simulator alone; a live
cluster (`--kubeconfig`) and `--add` read Kubernetes objects and need the controller.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from policies import policy_class
from policies.registry import parse_options
from simulator.progress import ProgressBar, add_progress_argument
from simulator.whatif.forecast import ADDED, PolicySpec, plan_forecast, run_samples
from simulator.whatif.report import (
    NEVER_FITS,
    combine,
    format_summary,
    prediction_rows,
    summaries,
    write_forecast,
)
from simulator.whatif.score import add_score_arguments, score_command
from traces.outputs import add_force_argument, check_output_dir
from traces.snapshot import ClusterSnapshot, SnapPending, read_snapshot

DEFAULT_HORIZON_S = 6 * 3600.0


def add_whatif_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "whatif",
        help="forecast when pending jobs start and finish, under several policies",
        description="Replay a cluster snapshot forward under each policy (uncertain "
        "remaining times drawn --samples times) and report, per policy, the p50/p90 "
        "start and finish of every pending job, queue length and allocation over the "
        "horizon and ContinualTrainingJob deadline misses. Writes predictions.csv, "
        "timeline.csv, summary.json, snapshot.json and forecast.png. docs/whatif.md.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--snapshot", type=Path, help="a snapshot file (snapshot.json of a run)")
    source.add_argument(
        "--kubeconfig",
        help="capture the cluster of this kubeconfig now (one LIST of nodes, pods, CTJs)",
    )
    parser.add_argument(
        "--policies",
        help="comma-separated policies to forecast (default: the live policy, or fifo)",
    )
    parser.add_argument(
        "--live-policy",
        help="the policy the cluster runs (live capture; default: the first of --policies)",
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="POLICY:KEY=VALUE",
        help="a policy config option for one policy (repeatable)",
    )
    parser.add_argument(
        "--horizon",
        type=float,
        default=DEFAULT_HORIZON_S,
        help="seconds to look ahead (default: %(default)g)",
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="draws of uncertain remaining times (default: 8)"
    )
    parser.add_argument(
        "--resolution",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="round remaining times up to this step: much faster on thousands of jobs, each "
        "prediction off by less than a step per job ahead of it (default: 0, exact)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--workers", type=int, help="processes for the simulations (default: one per core)"
    )
    parser.add_argument(
        "--add",
        type=Path,
        help="a Pod manifest (YAML; several documents make a gang): when would it start "
        "if submitted now?",
    )
    parser.add_argument("--out", type=Path, default=Path("out/whatif"), help="output directory")
    add_force_argument(parser)
    parser.add_argument(
        "--scheduler-name", default="gpufleet", help="live capture: our pods' schedulerName"
    )
    parser.add_argument(
        "--backend", default="whole", help="live capture: the controller's GPU device backend"
    )
    add_progress_argument(parser)
    add_score_arguments(parser)
    parser.set_defaults(handler=_whatif)


def _whatif(args: argparse.Namespace) -> int:
    if args.score is not None:
        return score_command(args)
    if args.samples < 1:
        raise ValueError("--samples must be >= 1")
    check_output_dir(args.out, args.force)
    now = time.time()
    snapshot = _snapshot(args, now)
    names = _policies(args, snapshot)
    added = _added(args, now) if args.add is not None else []
    plan = plan_forecast(snapshot, args.horizon, added, args.resolution)
    specs = [PolicySpec(name, _options(args.option, name)) for name in names]
    cells = len(specs) * (args.samples if plan.uncertain else 1)
    bar = ProgressBar(cells, "whatif", enabled=args.progress)
    try:
        runs = run_samples(plan, specs, args.samples, args.seed, args.workers, bar.update)
    finally:
        bar.close()
    forecasts = combine(runs, args.samples)
    config = {
        "snapshot": str(args.snapshot or args.kubeconfig or ""),
        "policies": names,
        "horizon_s": args.horizon,
        "samples": args.samples,
        "resolution_s": args.resolution,
        "seed": args.seed,
        "added": [job.id for job in added],
    }
    write_forecast(args.out, snapshot, plan, forecasts, config, args.force)
    for problem in snapshot.problems:
        print(f"set aside: {problem}")
    for job_id in plan.never_fits:
        print(f"never starts: {job_id} {NEVER_FITS}")
    print(format_summary(summaries(plan, forecasts)))
    if added:
        _answer(plan, forecasts, snapshot.policy or names[0])
    print(f"wrote {args.out}")
    return 0


def _snapshot(args: argparse.Namespace, now: float) -> ClusterSnapshot:
    if args.snapshot is not None:
        return read_snapshot(args.snapshot)
    if args.kubeconfig is None:
        raise ValueError("give --snapshot FILE or --kubeconfig FILE")
    from controller.kube.kubeapi import KubeApi, load_config
    from controller.scheduling.encoders import make_encoder
    from controller.whatif.capture import list_snapshot

    live = args.live_policy or (args.policies or "fifo").split(",")[0].strip()
    policy_class(live)

    async def capture() -> ClusterSnapshot:
        api = KubeApi(load_config(args.kubeconfig))
        try:
            encoder = make_encoder(args.backend)
            return await list_snapshot(api, encoder, args.scheduler_name, now, live, args.horizon)
        finally:
            await api.close()

    return asyncio.run(capture())


def _policies(args: argparse.Namespace, snapshot: ClusterSnapshot) -> list[str]:
    text = args.policies or snapshot.policy or "fifo"
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--policies names no policy")
    for name in names:
        policy_class(name)
    return names


def _options(pairs: Sequence[str], policy: str) -> dict[str, str]:
    mine = []
    for pair in pairs:
        name, sep, rest = pair.partition(":")
        if not sep:
            raise ValueError(f"-o {pair!r}: expected POLICY:KEY=VALUE")
        if name.strip() == policy:
            mine.append(rest)
    return parse_options(mine)


def _added(args: argparse.Namespace, now: float) -> list[SnapPending]:
    import yaml

    from controller.scheduling.encoders import make_encoder
    from controller.whatif.capture import added_jobs

    try:
        documents = [d for d in yaml.safe_load_all(args.add.read_text(encoding="utf-8")) if d]
    except yaml.YAMLError as err:
        raise ValueError(f"--add {args.add}: not YAML ({err})") from None
    return added_jobs(documents, make_encoder(args.backend), now)


def _answer(plan: Any, forecasts: Any, live: str) -> None:
    rows = prediction_rows(plan, forecasts)
    for row in _added_rows(rows):
        marker = "  (live policy)" if row["policy"] == live else ""
        if row["note"]:
            print(f"{row['job_id']} under {row['policy']}{marker}: never starts: {row['note']}")
            continue
        start = _when(row["start_p50_s"]), _when(row["start_p90_s"])
        print(
            f"{row['job_id']} under {row['policy']}{marker}: starts in {start[0]} (p50), "
            f"{start[1]} (p90); finishes in {_when(row['finish_p50_s'])} (p50)"
        )


def _added_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [row for row in rows if row["kind"] == ADDED]


def _when(value: object) -> str:
    return "beyond the horizon" if value == "" else f"{float(value):.0f} s"  # type: ignore[arg-type]
