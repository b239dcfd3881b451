"""A control plane on 127.0.0.1: etcd, kube-apiserver (generated certificates, RBAC on),
kube-controller-manager, optionally kube-scheduler, and KWOK out-of-cluster with
gpufleet's stages (deploy/kwok/stages.yaml), so fake nodes turn Ready and fake pods run
and finish. `gpufleet dev-cluster` runs one for users; the real-apiserver tests and the
benchmarks run one each.

The binaries come from `tools/controlplane/build.sh` (cached outside the checkout).
Every process gets its own session, so it outlives the Python process that started it
(`gpufleet dev-cluster up` exits and the cluster runs on) and Ctrl-C in a terminal does
not reach it; `stop()`, or `gpufleet dev-cluster down` by recorded PID, ends it. A test
run's plane (`PlaneOptions.die_with_starter`) instead dies with its starter, so a
killed run leaves no control plane behind.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.devcluster.pki import (
    Pki,
    client_certificate_credentials,
    kubeconfig,
    new_key,
    pem_key,
    pem_public_key,
)

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "controlplane" / "build.sh"
STAGES = REPO / "deploy" / "kwok" / "stages.yaml"
CLUSTER_ROLE = REPO / "deploy" / "rbac" / "clusterrole.yaml"
CONTROLLER_USER = "gpufleet-scheduler"
"""A certificate user bound to deploy/'s ClusterRole: exactly the deployed controller's
rights, for tests that want RBAC to apply."""
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
HOW_TO_BUILD = (
    "control-plane binaries not built. Run tools/controlplane/build.sh (needs Go >= 1.26 "
    "and the Go module proxy; a cold build takes several minutes on 2 cores) or set "
    "GPUFLEET_CONTROLPLANE_BIN to a directory with " + ", ".join(BINARIES) + " and kubectl."
)

TEST_CONTROLLERS = (
    "pod-garbage-collector-controller",
    "garbage-collector-controller",
    "resourceclaim-controller",
)
"""What the test tier needs of kube-controller-manager: owned pods go with their owner,
and DRA claims are made from templates and cleaned up after their pods."""
DEV_CONTROLLERS = (
    *TEST_CONTROLLERS,
    "namespace-controller",
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "disruption-controller",
)
"""A user's cluster also runs Deployments (gpufleet's own), Jobs and namespaces."""


@dataclass(frozen=True)
class PlaneOptions:
    controllers: tuple[str, ...] = TEST_CONTROLLERS
    kube_scheduler: bool = False
    """Tests leave it off: their pods of 'other schedulers' must stay pending."""
    pods_watch_cache: bool = False
    """False (the tests' choice) serves pod watches from etcd, so compacting etcd makes
    old resourceVersions answer 410 on demand; users and benchmarks want the default."""
    controller_user: bool = True
    """Write `controller-user.kubeconfig` for CONTROLLER_USER, bound to deploy/'s role."""
    die_with_starter: bool = False
    """The processes get SIGKILL when the Python process that started them dies, even by
    SIGKILL (`tied_to_starter`): what a test run wants, never `gpufleet dev-cluster`."""


DEV_OPTIONS = PlaneOptions(
    controllers=DEV_CONTROLLERS, kube_scheduler=True, pods_watch_cache=True, controller_user=False
)


def find_binaries() -> Path | None:
    """The bin directory if every binary is there (nothing is built from here)."""
    explicit = os.environ.get("GPUFLEET_CONTROLPLANE_BIN")
    candidates = [Path(explicit)] if explicit else []
    if not explicit and BUILD_SCRIPT.exists():
        probe = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--check"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and probe.stdout.strip():
            candidates.append(Path(probe.stdout.strip().splitlines()[-1]))
    for path in candidates:
        if all(os.access(path / n, os.X_OK) for n in (*BINARIES, "kubectl")):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControlPlane:
    """Start with `start()`, stop with `stop()`. Everything it writes is in `workdir`:
    certificates, kubeconfigs, `<process>.log` and etcd's data in `etcd/`."""

    def __init__(
        self, bin_dir: Path, workdir: Path, options: PlaneOptions = PlaneOptions()
    ) -> None:
        self.bin = bin_dir
        self.options = options
        self.dir = workdir
        self.ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kwok")}
        self.api_port = self.ports["apiserver"]
        self.server = f"https://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.admin_kubeconfig = workdir / "admin.kubeconfig"
        self.scheduler_kubeconfig = workdir / "controller-user.kubeconfig"
        self.admin_cert = (workdir / "admin.crt", workdir / "admin.key")
        self.pki = Pki.create()
        self.written: list[str] = []
        """Names in `workdir` this plane created, in order (etcd's data directory too)."""

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start every process, in dependency order; on failure stop what started."""
        try:
            self._write_pki()
            self._start_etcd()
            self.start_apiserver()
            if self.options.controller_user:
                self._grant_controller_user()
            self._start_controller_manager()
            if self.options.kube_scheduler:
                self._start_scheduler()
            self._start_kwok()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in list(self.procs)[::-1]:
            self._terminate(name)

    def restart_apiserver(self) -> None:
        self._terminate("kube-apiserver")
        self.start_apiserver()

    def stop_apiserver(self) -> None:
        self._terminate("kube-apiserver")

    # -- pieces -------------------------------------------------------------------------

    def _write_pki(self) -> None:
        self._write("ca.crt", self.pki.ca_pem)
        self._write("ca.key", pem_key(self.pki.ca_key))
        cert, key = self.pki.issue("kube-apiserver", server=True)
        self._write("apiserver.crt", cert)
        self._write("apiserver.key", key)
        service_accounts = new_key()
        self._write("sa.key", pem_key(service_accounts))
        self._write("sa.pub", pem_public_key(service_accounts))
        admin_cert, admin_key = self.pki.issue("admin", groups=("system:masters",))
        self._write(self.admin_cert[0].name, admin_cert)
        self._write(self.admin_cert[1].name, admin_key)
        self._write_kubeconfig(self.admin_kubeconfig, "admin", admin_cert, admin_key)
        if self.options.controller_user:
            cert, key = self.pki.issue(CONTROLLER_USER)
            self._write_kubeconfig(self.scheduler_kubeconfig, CONTROLLER_USER, cert, key)

    def _write_kubeconfig(self, path: Path, user: str, cert: bytes, key: bytes) -> None:
        credentials = client_certificate_credentials(cert, key)
        self._write(path.name, kubeconfig(self.server, self.pki.ca_pem, user, credentials).encode())

    def _write(self, name: str, data: bytes) -> None:
        path = self.dir / name
        if path.exists():
            raise FileExistsError(f"{path} exists; the control plane writes only new files")
        path.write_bytes(data)
        self.written.append(name)

    def _start_etcd(self) -> None:
        url = f"http://127.0.0.1:{self.ports['etcd']}"
        self.written.append("etcd")
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: _http_ok(f"{url}/health"), "etcd")

    def start_apiserver(self) -> None:
        d = self.dir
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # Without the node-lifecycle controller nothing would lift the not-ready taint.
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                *([] if self.options.pods_watch_cache else ["--watch-cache-sizes=pods#0"]),
                "--etcd-compaction-interval=0",
                "--enable-priority-and-fairness=false",
                "--max-requests-inflight=2000",
                "--max-mutating-requests-inflight=1000",
                "--v=1",
            ],
        )
        self._wait(self._apiserver_ready, "kube-apiserver", timeout_s=90)

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--controllers={','.join(self.options.controllers)}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--terminated-pod-gc-threshold=100000",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        """The default scheduler, for every pod that does not name gpufleet (the
        controller's own Deployment, for one)."""
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={self.admin_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.0.0.0/16",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
            ],
        )

    def _grant_controller_user(self) -> None:
        """deploy/'s ClusterRole, bound to CONTROLLER_USER."""
        role = yaml.safe_load(CLUSTER_ROLE.read_text())
        binding: dict[str, Any] = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{CONTROLLER_USER}-tests"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}
            ],
        }
        for doc in (role, binding):
            kind = doc["kind"].lower() + "s"
            url = f"{self.server}/apis/rbac.authorization.k8s.io/v1/{kind}"
            status, answer = self.admin_request("POST", url, doc)
            if status != 201:
                raise RuntimeError(f"creating {doc['kind']} answered {status}: {answer}")

    # -- helpers --------------------------------------------------------------------------

    def admin_request(self, method: str, url: str, body: object = None) -> tuple[int, object]:
        context = ssl.create_default_context(cadata=self.pki.ca_pem.decode())
        context.load_cert_chain(*map(str, self.admin_cert))
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw.startswith(b"{") else raw
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def _apiserver_ready(self) -> bool:
        try:
            status, _ = self.admin_request("GET", f"{self.server}/readyz")
        except (OSError, ssl.SSLError):
            return False
        return status == 200

    def etcd_revision(self) -> int:
        body = self._etcd_call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        return int(body["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision: every older resourceVersion is gone."""
        revision = self.etcd_revision()
        self._etcd_call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def _etcd_call(self, path: str, body: object) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['etcd']}{path}",
            data=json.dumps(body).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def _spawn(self, name: str, args: list[str]) -> None:
        if f"{name}.log" not in self.written:
            self.written.append(f"{name}.log")
        prefix = tied_to_starter() if self.options.die_with_starter else []
        with open(self.dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [*prefix, str(self.bin / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _terminate(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _wait(self, ready: Callable[[], bool], name: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self._tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {timeout_s:.0f}s:\n{self._tail(name)}")

    def _tail(self, name: str) -> str:
        """The end of a process's log, for an error that outlives the log file."""
        return (self.dir / f"{name}.log").read_text(errors="replace")[-3000:]


_SETPRIV = shutil.which("setpriv")


def tied_to_starter() -> list[str]:
    """The command prefix that sends a process SIGKILL when the Python process starting
    it dies (util-linux `setpriv --pdeathsig`); none without setpriv, or off the main
    thread: the signal follows the starting thread, so a process started from a worker
    thread would die with that thread."""
    on_main = threading.current_thread() is threading.main_thread()
    return [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV and on_main else []


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
