"""A throwaway control plane on 127.0.0.1 for the real-apiserver tier: etcd,
kube-apiserver (generated certificates, RBAC on), kube-controller-manager (pod GC and
garbage collection) and kwok out-of-cluster with gpufleet's stages.

The binaries come from `tools/controlplane/build.sh` (cached outside the checkout).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "controlplane" / "build.sh"
STAGES = REPO / "deploy" / "kwok" / "stages.yaml"
CLUSTER_ROLE = REPO / "deploy" / "rbac" / "clusterrole.yaml"
SCHEDULER_USER = "gpufleet-scheduler"
HOW_TO_BUILD = (
    "real-apiserver tier skipped: control-plane binaries not built. Run "
    "tools/controlplane/build.sh (needs Go >= 1.26 and the Go module proxy; a cold build "
    "takes several minutes on 2 cores) or set GPUFLEET_CONTROLPLANE_BIN to a directory "
    "with etcd, kube-apiserver, kube-controller-manager and kwok."
)


def find_binaries() -> Path | None:
    """The bin directory if every binary is there (no build is started from tests)."""
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kwok")
    explicit = os.environ.get("GPUFLEET_CONTROLPLANE_BIN")
    candidates = [Path(explicit)] if explicit else []
    if not explicit and BUILD_SCRIPT.exists():
        probe = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--check"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and probe.stdout.strip():
            candidates.append(Path(probe.stdout.strip().splitlines()[-1]))
    for path in candidates:
        if all(os.access(path / n, os.X_OK) for n in names):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- certificates ---------------------------------------------------------------------


@dataclass
class Pki:
    ca_key: rsa.RSAPrivateKey
    ca_cert: x509.Certificate

    @classmethod
    def create(cls) -> Pki:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpufleet-test-ca")])
        cert = (
            _builder(name, name, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self, common_name: str, groups: tuple[str, ...] = (), server: bool = False
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) signed by this CA."""
        key = _key()
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        builder = _builder(x509.Name(attrs), self.ca_cert.subject, key)
        if server:
            names: list[x509.GeneralName] = [
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def kubeconfig(server: str, ca: bytes, cert: bytes, key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": "user",
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    return json.dumps(doc, indent=1)


# -- processes ------------------------------------------------------------------------


class ControlPlane:
    """Start with `start()`, stop with `stop()`. Logs go to `<workdir>/*.log`."""

    def __init__(self, bin_dir: Path, workdir: Path, pods_watch_cache: bool = False) -> None:
        """`pods_watch_cache=False` (the tests' choice) serves pod watches from etcd, so
        compacting etcd makes old resourceVersions answer 410 on demand; a benchmark
        wants the apiserver's default (cached) behaviour."""
        self.bin = bin_dir
        self.pods_watch_cache = pods_watch_cache
        self.dir = workdir
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.admin_kubeconfig = workdir / "admin.kubeconfig"
        self.scheduler_kubeconfig = workdir / "scheduler.kubeconfig"
        self.pki = Pki.create()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._write_pki()
        self._start_etcd()
        self.start_apiserver()
        self.kubectl_apply_rbac()
        self._start_controller_manager()
        self._start_kwok()

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
        d = self.dir
        (d / "ca.crt").write_bytes(self.pki.ca_pem)
        (d / "ca.key").write_bytes(_pem_key(self.pki.ca_key))
        cert, key = self.pki.issue("kube-apiserver", server=True)
        (d / "apiserver.crt").write_bytes(cert)
        (d / "apiserver.key").write_bytes(key)
        sa = _key()
        (d / "sa.key").write_bytes(_pem_key(sa))
        (d / "sa.pub").write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        admin_cert, admin_key = self.pki.issue("admin", groups=("system:masters",))
        self.admin_cert = (d / "admin.crt", d / "admin.key")
        self.admin_cert[0].write_bytes(admin_cert)
        self.admin_cert[1].write_bytes(admin_key)
        self.admin_kubeconfig.write_text(
            kubeconfig(self.server, self.pki.ca_pem, admin_cert, admin_key)
        )
        sched_cert, sched_key = self.pki.issue(SCHEDULER_USER)
        self.scheduler_kubeconfig.write_text(
            kubeconfig(self.server, self.pki.ca_pem, sched_cert, sched_key)
        )

    def _start_etcd(self) -> None:
        url = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
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
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
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
                *([] if self.pods_watch_cache else ["--watch-cache-sizes=pods#0"]),
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
                # resourceclaim-controller: ResourceClaimTemplate → claim, and DRA cleanup.
                "--controllers=pod-garbage-collector-controller,garbage-collector-controller,"
                "resourceclaim-controller",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--terminated-pod-gc-threshold=100000",
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
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )

    def kubectl_apply_rbac(self) -> None:
        """The deployment's ClusterRole, bound to the restricted test user as well, so the
        scheduler tests run with exactly the rights the deployed controller has."""
        import yaml

        role = yaml.safe_load(CLUSTER_ROLE.read_text())
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{SCHEDULER_USER}-tests"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": SCHEDULER_USER}
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

    def _etcd_call(self, path: str, body: object) -> dict[str, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.etcd_port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [str(self.bin / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

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

    def _wait(self, ready: object, name: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                tail = (self.dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {timeout_s:.0f}s (see {self.dir}/{name}.log)")

    def cleanup_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
