"""`--shadow-policies`, `--shadow-log` and `--forecast-score` of `controller run|serve`."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.shadow.runner import ShadowOptions
from policies import make_policy, policy_class


def add_shadow_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shadow policies (decide on the live snapshots, never bind)")
    group.add_argument(
        "--shadow-policies",
        metavar="NAMES",
        help="comma-separated policies that decide beside the live one (e.g. sia,fgd); "
        "their divergence is exported as gpufleet_shadow_* metrics",
    )
    group.add_argument(
        "--shadow-log",
        type=Path,
        metavar="PATH",
        help="append one JSON line per shadow verdict here (controller.shadow.log reads it)",
    )
    group.add_argument(
        "--shadow-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="evaluate the newest live snapshot at most this often (default: 1)",
    )
    parser.add_argument(
        "--forecast-score",
        type=Path,
        metavar="PATH",
        help="export the error of earlier forecasts from this `gpufleet whatif --score` "
        "output (score.csv or its directory, read at each scrape) as "
        "gpufleet_forecast_error_seconds",
    )


def shadow_options(args: argparse.Namespace) -> ShadowOptions | None:
    if not args.shadow_policies:
        if args.shadow_log is not None:
            raise ValueError("--shadow-log needs --shadow-policies")
        return None
    names = [n.strip() for n in args.shadow_policies.split(",") if n.strip()]
    if not names:
        raise ValueError("--shadow-policies names no policy")
    for name in names:
        policy_class(name)
    if len(set(names)) != len(names):
        raise ValueError(f"--shadow-policies names a policy twice: {args.shadow_policies!r}")
    if args.shadow_interval <= 0:
        raise ValueError("--shadow-interval must be > 0")
    return ShadowOptions(
        tuple(make_policy(n) for n in names),
        log_path=args.shadow_log,
        interval_s=args.shadow_interval,
        seed=args.seed,
    )
