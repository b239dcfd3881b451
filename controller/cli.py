"""`gpufleet controller run|serve|record`.

The top-level `gpufleet` parser calls `add_controller_commands(subparsers)`; each
command sets `handler`, which returns the exit code. `run` and `serve` are two sets of
defaults for the same manager (`controller.serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from pathlib import Path

from controller.dra.cli import add_dra_arguments, dra_options
from controller.kube.informer import Informer
from controller.kube.kubeapi import KubeApi, load_config
from controller.recorder import DEFAULT_LOOKBACK_S, TraceRecorder
from controller.runtime import DRA_PATHS
from controller.scheduling.encoders import make_encoder
from controller.serve import add_cluster_arguments, add_run_command, add_serve_command
from traces.outputs import add_force_argument, check_output_dir


def add_controller_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "controller",
        help="run gpufleet's policies as a Kubernetes scheduler, or record a cluster",
        description="The Kubernetes side of gpufleet: the same policy objects as the simulator.",
    )
    sub = parser.add_subparsers(title="controller commands", metavar="COMMAND")
    add_run_command(sub)
    add_serve_command(sub)
    _add_record(sub)


def _common(parser: argparse.ArgumentParser) -> None:
    add_cluster_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")


def _add_record(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "record",
        help="write what the cluster does as a trace directory `gpufleet simulate --trace` "
        "replays: gpufleet's pods as jobs, every other pod as an occupant of its node",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    add_force_argument(parser)
    parser.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--lookback",
        type=float,
        default=DEFAULT_LOOKBACK_S,
        help="keep pods still listed from up to this many seconds before the start, "
        "finished ones too (default: %(default)g)",
    )
    _common(parser)
    add_dra_arguments(parser)
    parser.set_defaults(handler=_record)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _record(args: argparse.Namespace) -> int:
    check_output_dir(args.out, args.force)  # refuse before recording, not after
    _setup_logging(args.log_level)
    dra = dra_options(args)
    recorder = TraceRecorder(
        make_encoder(args.backend), args.scheduler_name, lookback_s=args.lookback, dra=dra
    )
    config = load_config(args.kubeconfig)

    async def main() -> None:
        api = KubeApi(config)
        informers = [
            Informer(api, "nodes", "/api/v1/nodes", recorder),
            # All pods, terminal ones too: those finished before the start are the look-back.
            Informer(api, "pods", "/api/v1/pods", recorder),
            *(Informer(api, kind, path, recorder) for kind, path in DRA_PATHS if dra.enabled),
        ]
        work = asyncio.gather(*(i.run() for i in informers))
        try:
            if args.duration is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_until_signal(work), args.duration)
            else:
                await _until_signal(work)
        finally:
            work.cancel()
            await api.close()

    asyncio.run(main())
    count = recorder.write(args.out, args.force)
    logging.getLogger(__name__).info("recorded %d jobs to %s", count, args.out)
    return 0


async def _until_signal(work: Awaitable[object]) -> None:
    """Run `work` until it ends or SIGINT/SIGTERM arrives."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
