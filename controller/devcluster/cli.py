"""`gpufleet dev-cluster up|status|env|down`: a Kubernetes cluster on this machine for
trying the controller, the CRD and `kubectl get ctj` with no cluster at hand.

`up` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK from
the cached build of tools/controlplane/build.sh, detached (they run on after the command
exits), creates N fake GPU nodes labelled as GPU Feature Discovery labels real ones and
one untainted CPU node for ordinary pods, and prints the next commands. `down` stops
exactly the processes `up` started and removes exactly the files it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path

from controller.devcluster.fleet import GFD_PRODUCTS, Admin, gfd_product, gpu_nodes
from controller.devcluster.launcher import (
    DEV_OPTIONS,
    HOW_TO_BUILD,
    REPO,
    ControlPlane,
    find_binaries,
)
from controller.devcluster.state import (
    STATE_FILE,
    ClusterState,
    Process,
    process_identity,
    remove_files,
    stop_processes,
)
from policies import NodeSpec

DEFAULT_DIR = Path("~/.cache/gpufleet/dev-cluster")
SYSTEM_NODE = NodeSpec("system-node-0", 16_000, 65_536)
"""Untainted and GPU-less: where the default scheduler puts ordinary pods (gpufleet's
own Deployment), as a real cluster's CPU nodes would take them."""
NODES_READY_TIMEOUT_S = 120.0


def add_dev_cluster_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "dev-cluster",
        help="a local Kubernetes cluster with fake GPU nodes (KWOK), to try the controller",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="dev-cluster commands", metavar="COMMAND")
    up = sub.add_parser(
        "up",
        help="start the cluster and create its nodes",
        description="Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and "
        "KWOK on 127.0.0.1 (they run on after this command exits), create the fake GPU nodes "
        "and one CPU node, write an admin kubeconfig, and print the next commands.",
    )
    up.add_argument("--nodes", type=_positive, default=8, help="fake GPU nodes (default: 8)")
    up.add_argument("--gpus-per-node", type=_positive, default=8, help="GPUs per node (default: 8)")
    up.add_argument(
        "--models",
        type=_models,
        default=("A100", "V100"),
        help="comma-separated GPU models, given to the nodes in turn (default: A100,V100); "
        f"known: {', '.join(GFD_PRODUCTS)}, or a product name such as NVIDIA-A100-80GB-PCIe",
    )
    _add_dir(up)
    up.set_defaults(handler=_up)
    for name, handler, text in (
        ("status", _status, "say whether the cluster runs, and where"),
        ("env", _env, 'print the exports for a shell: eval "$(gpufleet dev-cluster env)"'),
        ("down", _down, "stop the processes `up` started and remove the files it wrote"),
    ):
        command = sub.add_parser(name, help=text)
        _add_dir(command)
        command.set_defaults(handler=handler)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"where the cluster keeps its state, certificates and logs (default: {DEFAULT_DIR})",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _models(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise argparse.ArgumentTypeError("name at least one GPU model")
    for model in models:
        try:
            gfd_product(model)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    return models


# -- up -------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    directory = args.dir.expanduser().absolute()
    created = _claim(directory)
    bin_dir = find_binaries()
    if bin_dir is None:
        _release(directory, created)
        raise ValueError(HOW_TO_BUILD)
    plane = ControlPlane(bin_dir, directory, DEV_OPTIONS)
    nodes = gpu_nodes(args.nodes, args.gpus_per_node, args.models)
    try:
        _say(f"starting the control plane in {directory} (logs: {directory}/*.log)")
        started = time.monotonic()
        plane.start()
        _say(f"kube-apiserver ready at {plane.server} after {time.monotonic() - started:.1f}s")
        asyncio.run(_create_nodes(plane, nodes))
        state = _record(plane, bin_dir, nodes, created)
        state.save(directory)
    except BaseException as err:
        plane.stop()
        remove_files(directory, plane.written, created)
        if isinstance(err, RuntimeError):
            print(f"gpufleet: error: the dev cluster did not start: {err}", file=sys.stderr)
            return 1
        raise
    print(_next_steps(state, directory, nodes))
    return 0


def _claim(directory: Path) -> bool:
    """Make sure `directory` is ours to write in; True if we created it. A state file
    whose processes all ended is a cluster that stopped (a reboot): its files go."""
    state = ClusterState.load(directory)
    if state is not None:
        if state.running():
            raise ValueError(
                f"a dev cluster already runs from {directory}: "
                f"`gpufleet dev-cluster status --dir {directory}`, or `down` first"
            )
        remove_files(directory, state.files, state.created_dir)
        _say(f"removed the files of a dev cluster that had stopped ({directory})")
    if directory.exists():
        leftovers = sorted(p.name for p in directory.iterdir())
        if leftovers:
            raise ValueError(
                f"{directory} holds files gpufleet did not write ({', '.join(leftovers[:5])}); "
                "give an empty or new --dir"
            )
        return False
    directory.mkdir(parents=True)
    return True


def _release(directory: Path, created: bool) -> None:
    if created and directory.exists() and not any(directory.iterdir()):
        directory.rmdir()


async def _create_nodes(plane: ControlPlane, nodes: list[NodeSpec]) -> None:
    admin = Admin(str(plane.admin_kubeconfig))
    try:
        await admin.create_nodes([SYSTEM_NODE], tainted=False)
        await admin.create_nodes(nodes)
        wanted = {n.name for n in nodes} | {SYSTEM_NODE.name}
        deadline = time.monotonic() + NODES_READY_TIMEOUT_S
        while not wanted <= (ready := await admin.ready_nodes()):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(wanted - ready)} nodes not Ready after {NODES_READY_TIMEOUT_S:.0f}s "
                    f"(KWOK's log: {plane.dir}/kwok.log)"
                )
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    _say(f"{len(nodes)} fake GPU nodes and {SYSTEM_NODE.name} are Ready")


def _record(
    plane: ControlPlane, bin_dir: Path, nodes: list[NodeSpec], created: bool
) -> ClusterState:
    processes = []
    for name, proc in plane.procs.items():
        identity = process_identity(proc.pid)
        if identity is None:
            raise RuntimeError(f"{name} exited (see {plane.dir}/{name}.log)")
        processes.append(Process(name, proc.pid, identity))
    return ClusterState(
        server=plane.server,
        bin_dir=str(bin_dir),
        admin_kubeconfig=str(plane.admin_kubeconfig),
        nodes=[SYSTEM_NODE.name, *(n.name for n in nodes)],
        processes=processes,
        files=list(plane.written),
        created_dir=created,
        ports=dict(plane.ports),
    )


def _next_steps(state: ClusterState, directory: Path, nodes: list[NodeSpec]) -> str:
    models = sorted({n.product for n in nodes})
    gpus = sum(n.gpus for n in nodes)
    dir_flag = "" if directory == DEFAULT_DIR.expanduser().absolute() else f" --dir {directory}"
    return "\n".join(
        [
            f"dev cluster up: {state.server}, {len(nodes)} nodes with {gpus} GPUs "
            f"({', '.join(models)}), KWOK taint kwok.x-k8s.io/node=fake:NoSchedule on them",
            "",
            "Next (the README's 'Running the controller in-cluster' goes on from here):",
            f"  {_exports(state)}",
            "  kubectl get nodes -L nvidia.com/gpu.product",
            f"  kubectl apply --server-side -k {_repo_path('deploy')}/",
            "  kubectl wait --for=condition=Established crd/continualtrainingjobs.ctj.gpufleet.io",
            f"  gpufleet controller run --policy fgd --ctj --kubeconfig {state.admin_kubeconfig}",
            f"  kubectl apply -f {_repo_path('examples/continualtrainingjob.yaml')}",
            "  kubectl get ctj -w",
            f"  gpufleet dev-cluster down{dir_flag}",
        ]
    )


def _exports(state: ClusterState) -> str:
    return (
        f"export KUBECONFIG={shlex.quote(state.admin_kubeconfig)} "
        f'PATH={shlex.quote(state.bin_dir)}:"$PATH"'
    )


def _repo_path(relative: str) -> str:
    """Relative to the working directory when run from the checkout, else absolute."""
    path = REPO / relative
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- status, env, down -----------------------------------------------------------------


def _loaded(args: argparse.Namespace) -> tuple[Path, ClusterState]:
    directory = args.dir.expanduser().absolute()
    state = ClusterState.load(directory)
    if state is None:
        raise ValueError(f"no dev cluster in {directory} (no {STATE_FILE}); start one with `up`")
    return directory, state


def _status(args: argparse.Namespace) -> int:
    directory, state = _loaded(args)
    running = {p.name for p in state.running()}
    for proc in state.processes:
        mark = "running" if proc.name in running else "stopped"
        print(f"{proc.name:<24} pid {proc.pid:<8} {mark}")
    print(f"api server   {state.server}")
    print(f"kubeconfig   {state.admin_kubeconfig}")
    print(f"nodes        {len(state.nodes)} ({state.nodes[0]} … {state.nodes[-1]})")
    print(f"logs         {directory}/*.log")
    if len(running) == len(state.processes):
        return 0
    print(f"not all processes run: `gpufleet dev-cluster down --dir {directory}`, then `up`")
    return 1


def _env(args: argparse.Namespace) -> int:
    _, state = _loaded(args)
    if not state.running():
        raise ValueError("the dev cluster is not running (`gpufleet dev-cluster status`)")
    print(_exports(state))
    return 0


def _down(args: argparse.Namespace) -> int:
    directory, state = _loaded(args)
    stopped = stop_processes(state)
    remove_files(directory, state.files, state.created_dir)
    print(
        f"stopped {', '.join(stopped) or 'nothing (no process still ran)'}; "
        f"removed the files it wrote in {directory}"
    )
    return 0


def _say(text: str) -> None:
    print(f"dev-cluster: {text}", file=sys.stderr, flush=True)
