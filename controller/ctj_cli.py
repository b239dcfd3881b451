"""`serve`: the controller as it runs in the cluster (scheduler, ContinualTrainingJob
reconciler, leader election, metrics and probes). This is the Deployment's command:

    python -m controller.ctj_cli serve --policy fgd

`add_serve_command(subparsers)` adds the same command to another parser (e.g. under
`gpufleet controller`). Exit codes: 0 after SIGINT/SIGTERM (the lease is released
first), 1 when the lease was lost (the container restarts and rejoins as a candidate),
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from controller.encoders import ENCODERS
from controller.kubeapi import KubeApi, load_config
from controller.leader import LeadershipLostError, LeaseConfig, default_namespace
from controller.logfmt import setup_logging
from controller.manager import Manager, ManagerOptions
from controller.objects import SCHEDULER_NAME
from controller.runtime import ControllerOptions
from controller.scheduler import SchedulerOptions
from policies import make_policy, policy_names
from policies.registry import parse_options

log = logging.getLogger(__name__)


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run in the cluster: scheduler, ContinualTrainingJob reconciler, leader "
        "election, metrics and probes",
    )
    parser.add_argument("--policy", required=True, help=f"one of: {', '.join(policy_names())}")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="policy option"
    )
    parser.add_argument("--seed", type=int, default=0, help="policy random seed (default: 0)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig (default: the pod's service account in a cluster)"
    )
    parser.add_argument("--scheduler-name", default=SCHEDULER_NAME)
    parser.add_argument("--backend", choices=sorted(ENCODERS), default="whole")
    parser.add_argument("--bind-concurrency", type=int, default=32)
    parser.add_argument("--resync-seconds", type=float, default=300.0)
    parser.add_argument(
        "--no-ctj", action="store_true", help="do not reconcile ContinualTrainingJobs"
    )
    parser.add_argument(
        "--metrics-address",
        default="0.0.0.0:8080",
        help="HOST:PORT for /metrics, /healthz, /readyz (default: 0.0.0.0:8080)",
    )
    election = parser.add_argument_group("leader election")
    election.add_argument(
        "--no-leader-elect", action="store_true", help="single replica: always lead"
    )
    election.add_argument("--lease-name", default="gpufleet-controller")
    election.add_argument(
        "--lease-namespace",
        default=default_namespace(),
        help="default: $POD_NAMESPACE, else gpufleet-system",
    )
    election.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS")
    election.add_argument("--renew-deadline", type=float, default=10.0, metavar="SECONDS")
    election.add_argument("--retry-period", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.set_defaults(handler=serve)


def manager_options(args: argparse.Namespace) -> ManagerOptions:
    host, _, port = args.metrics_address.rpartition(":")
    lease = None
    if not args.no_leader_elect:
        lease = LeaseConfig(
            name=args.lease_name,
            namespace=args.lease_namespace,
            lease_duration_s=args.lease_duration,
            renew_deadline_s=args.renew_deadline,
            retry_period_s=args.retry_period,
        )
    return ManagerOptions(
        controller=ControllerOptions(
            scheduler=SchedulerOptions(seed=args.seed, bind_concurrency=args.bind_concurrency),
            scheduler_name=args.scheduler_name,
            backend=args.backend,
            resync_s=args.resync_seconds,
        ),
        lease=lease,
        reconcile_ctjs=not args.no_ctj,
        probe_host=host or "0.0.0.0",
        probe_port=int(port),
    )


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    policy = make_policy(args.policy, parse_options(args.option))
    options = manager_options(args)
    config = load_config(args.kubeconfig)

    async def main() -> int:
        api = KubeApi(config)
        manager = Manager(api, policy, options)
        task = asyncio.ensure_future(manager.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("%s: stopped", manager.identity)
        except LeadershipLostError:
            return 1
        finally:
            await api.close()
        return 0

    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.ctj_cli")
    add_serve_command(parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
