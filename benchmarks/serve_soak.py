"""A long `serve` run on a local control plane: does the controller stay quiet?

Starts etcd, kube-apiserver, kube-controller-manager and KWOK with 8 fake 8-GPU nodes,
runs the Deployment's command (`python -m controller.serve serve`, leader election on)
for `--minutes`, creates one pod a minute, and counts the controller's log lines that
say a watch broke or a task died. Issue 20 asked for 30 minutes with no watch breaks
(watches used to break every ~330 s).

    python benchmarks/serve_soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.devcluster.fleet import Admin, pod_manifest  # noqa: E402
from controller.devcluster.launcher import HOW_TO_BUILD, ControlPlane, find_binaries  # noqa: E402
from policies import NodeSpec, TaskRequest  # noqa: E402

WATCH_BROKE = "watch broke"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    bins = find_binaries()
    if bins is None:
        print(HOW_TO_BUILD, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpufleet-soak-") as tmp:
        plane = ControlPlane(bins, Path(tmp))
        plane.start()
        try:
            return asyncio.run(soak(plane, Path(tmp), args.minutes))
        finally:
            plane.stop()


async def soak(plane: ControlPlane, tmp: Path, minutes: float) -> int:
    admin = Admin(str(plane.admin_kubeconfig))
    await admin.create_nodes(NodeSpec(f"soak-{i}", 32_000, 131_072, 8, "A100") for i in range(8))
    log_path = tmp / "serve.log"
    command = [
        sys.executable, "-m", "controller.serve", "serve", "--policy", "bestfit",
        "--kubeconfig", str(plane.admin_kubeconfig), "--no-ctj", "--lease-namespace",
        "default", "--metrics-address", "127.0.0.1:0", "--log-format", "text",
    ]  # fmt: skip
    started = time.time()
    with log_path.open("w") as log:
        serve = subprocess.Popen(command, cwd=REPO, stderr=log, stdout=log)
        try:
            for minute in range(int(minutes)):
                await admin.create_pod(pod_manifest(f"soak-{minute:03d}", TaskRequest(100, 64)))
                await asyncio.sleep(60)
                if serve.poll() is not None:
                    break
        finally:
            serve.terminate()
            serve.wait(timeout=30)
            await admin.close()
    text = log_path.read_text()
    breaks = text.count(WATCH_BROKE)
    died = text.count("controller task")
    print(
        f"serve ran {(time.time() - started) / 60:.1f} min, exit {serve.returncode}: "
        f"{breaks} watch breaks, {died} dead-task lines"
    )
    return 0 if breaks == 0 and died == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
