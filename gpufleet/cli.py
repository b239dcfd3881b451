"""`gpufleet`: the command tree. Each room adds its own commands through one function
(`add_*_commands(subparsers)`); every command sets `handler`, which returns the exit code.

Every failure a user can cause (bad argument, bad file, unknown policy) ends with one
line on stderr and exit code 2; no traceback, no partial output.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from gpufleet.whatif import add_whatif_commands
from simulator.cli import add_simulator_commands
from simulator.sweep.cli import add_sweep_commands
from traces import TraceError
from traces.cli import add_traces_commands

Handler = Callable[[argparse.Namespace], int]
OURS = {"gpufleet", "policies", "simulator", "traces", "controller"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except (TraceError, ValueError, KeyError, OSError) as err:
        print(f"gpufleet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpufleet: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufleet",
        description="GPU-cluster scheduling simulator and Kubernetes controller.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_simulator_commands(commands)
    add_sweep_commands(commands)
    add_traces_commands(commands)
    add_whatif_commands(commands)
    _add_controller(commands, "controller", "controller.cli", "add_controller_commands")
    _add_controller(
        commands, "dev-cluster", "controller.devcluster.cli", "add_dev_cluster_commands"
    )
    return parser


def _add_controller(
    commands: argparse._SubParsersAction, name: str, module_name: str, function: str
) -> None:
    """A command of the controller room, which needs the `controller` extras."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] in OURS:
            raise
        _add_controller_placeholder(commands, name, err.name)
        return
    getattr(module, function)(commands)


def _add_controller_placeholder(
    commands: argparse._SubParsersAction, name: str, missing: str
) -> None:
    """The simulator installs without the controller's extras; say how to get them."""
    parser = commands.add_parser(
        name,
        help=f"{name} (needs: pip install 'gpufleet[controller]')",
        description="The Kubernetes controller needs optional dependencies.",
    )
    parser.add_argument("args", nargs=argparse.REMAINDER)

    def explain(_args: argparse.Namespace) -> int:
        print(
            f"gpufleet: error: the controller needs module {missing!r}: "
            "pip install -e '.[controller]'",
            file=sys.stderr,
        )
        return 2

    parser.set_defaults(handler=explain)


if __name__ == "__main__":
    raise SystemExit(main())
