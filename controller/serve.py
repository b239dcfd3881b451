"""The one way a controller replica is started: `gpufleet controller serve` (the
Deployment's command, also `python -m controller.serve serve`) and `gpufleet controller
run` (the same manager with laptop defaults) both build a `Manager` and run it here.

    serve: leader election on, ContinualTrainingJobs reconciled, JSON logs, metrics and
           probes on :8080 (all interfaces inside a pod, 127.0.0.1 elsewhere).
    run:   a single replica that always leads, pods only, text logs, no metrics server.

Every default can be changed by its flag. Exit codes: 0 after SIGINT/SIGTERM (the lease
is released first), 1 when the lease was lost or a controller task died (the container
restarts and rejoins as a candidate), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from controller.dra.cli import add_dra_arguments, dra_options
from controller.kube.kubeapi import ApiConfig, KubeApi, load_config
from controller.kube.leader import LeadershipLostError, LeaseConfig, default_namespace
from controller.kube.objects import SCHEDULER_NAME
from controller.logfmt import setup_logging
from controller.manager import Manager, ManagerOptions
from controller.runtime import ControllerOptions
from controller.scheduling.encoders import ENCODERS
from controller.scheduling.scheduler import SchedulerOptions
from controller.shadow.cli import add_shadow_arguments, shadow_options
from controller.supervisor import TaskDiedError
from policies import Policy, make_policy, policy_names
from policies.registry import parse_options

log = logging.getLogger(__name__)

METRICS_PORT = 8080


def default_metrics_address() -> str:
    """All interfaces inside a pod (the kubelet probes the pod IP), loopback elsewhere:
    a laptop should not serve its controller's metrics to the network."""
    host = "0.0.0.0" if os.environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"
    return f"{host}:{METRICS_PORT}"


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run in the cluster: scheduler, ContinualTrainingJob reconciler, leader "
        "election, metrics and probes",
        description="A controller replica as the Deployment runs it.",
    )
    add_manager_arguments(parser, serving=True)
    parser.set_defaults(handler=serve)


def add_run_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "run",
        help="schedule pods with a gpufleet policy (one replica, no leader election)",
        description="The same manager as `serve`, with defaults for running from a laptop.",
    )
    add_manager_arguments(parser, serving=False)
    parser.set_defaults(handler=serve)


def add_manager_arguments(parser: argparse.ArgumentParser, serving: bool) -> None:
    """Flags of `serve` and `run`; `serving` picks the in-cluster defaults."""
    parser.add_argument("--policy", required=True, help=f"one of: {', '.join(policy_names())}")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy config option (repeatable); `gpufleet policies` lists them",
    )
    parser.add_argument("--seed", type=int, default=0, help="policy random seed (default: 0)")
    add_cluster_arguments(parser)
    _add_scheduling_arguments(parser)
    add_dra_arguments(parser)
    add_shadow_arguments(parser)
    parser.add_argument(
        "--ctj",
        action=argparse.BooleanOptionalAction,
        default=serving,
        help=f"reconcile ContinualTrainingJobs (default: {'on' if serving else 'off'})",
    )
    parser.add_argument(
        "--metrics-address",
        default=default_metrics_address() if serving else None,
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz here (default: "
        + (
            f"0.0.0.0:{METRICS_PORT} in a pod, else 127.0.0.1:{METRICS_PORT})"
            if serving
            else "none)"
        ),
    )
    _add_election_arguments(parser, serving)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json" if serving else "text",
        help=f"(default: {'json' if serving else 'text'})",
    )


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Which cluster, which pods and which GPU backend: the flags every controller
    command that talks to a cluster shares (`serve`, `run`, `record`)."""
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: the service account inside a pod, "
        "else $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--scheduler-name",
        default=SCHEDULER_NAME,
        help=f"pods with this spec.schedulerName are ours (default: {SCHEDULER_NAME})",
    )
    parser.add_argument(
        "--backend",
        choices=sorted(ENCODERS),
        default="whole",
        help="GPU device backend: how pods ask for GPUs and which annotations carry the "
        "chosen GPUs (default: whole)",
    )


def _add_scheduling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--round-seconds",
        type=float,
        help="round length for round-based policies (default: the policy's own)",
    )
    parser.add_argument(
        "--bind-concurrency", type=int, default=32, help="binds in flight at most (default: 32)"
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=300.0, help="full re-list period (default: 300)"
    )
    parser.add_argument(
        "--min-pass-interval",
        type=float,
        default=0.05,
        help="seconds between scheduling passes at least; changes in between are coalesced "
        "(default: 0.05)",
    )


def _add_election_arguments(parser: argparse.ArgumentParser, serving: bool) -> None:
    election = parser.add_argument_group("leader election")
    election.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=serving,
        help="hold a Lease so that one replica of several leads "
        + f"(default: {'on' if serving else 'off'})",
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


def manager_options(args: argparse.Namespace) -> ManagerOptions:
    lease = None
    if args.leader_elect:
        lease = LeaseConfig(
            name=args.lease_name,
            namespace=args.lease_namespace,
            lease_duration_s=args.lease_duration,
            renew_deadline_s=args.renew_deadline,
            retry_period_s=args.retry_period,
        )
    host, port = _address(args.metrics_address)
    return ManagerOptions(
        controller=ControllerOptions(
            scheduler=SchedulerOptions(
                seed=args.seed,
                bind_concurrency=args.bind_concurrency,
                round_s=args.round_seconds,
                min_pass_interval_s=args.min_pass_interval,
            ),
            scheduler_name=args.scheduler_name,
            backend=args.backend,
            dra=dra_options(args),
            resync_s=args.resync_seconds,
        ),
        lease=lease,
        reconcile_ctjs=args.ctj,
        shadows=shadow_options(args),
        forecast_score=args.forecast_score,
        probe_host=host,
        probe_port=port,
    )


def _address(text: str | None) -> tuple[str, int | None]:
    if text is None:
        return "127.0.0.1", None
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--metrics-address {text!r}: expected HOST:PORT")
    return host or "127.0.0.1", int(port)


def serve(args: argparse.Namespace) -> int:
    """Run one replica until a signal, a lost lease or a dead task."""
    setup_logging(args.log_level, args.log_format)
    policy = make_policy(args.policy, parse_options(args.option))
    options = manager_options(args)
    return asyncio.run(run_manager(load_config(args.kubeconfig), policy, options))


async def run_manager(config: ApiConfig, policy: Policy, options: ManagerOptions) -> int:
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
    except TaskDiedError as err:
        log.error("%s: %s; exiting so that another replica takes over", manager.identity, err)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await api.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.serve")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_serve_command(commands)
    add_run_command(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
