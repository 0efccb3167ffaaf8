"""Start and stop etcd + kube-apiserver + kube-controller-manager on free loopback ports."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .processes import die_with_parent

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
BIN_DIR_ENV = "MOEOPS_BIN_DIR"
DEFAULT_BIN_DIR = Path(__file__).resolve().parents[3] / ".cache" / "bin"
# Controllers the operator relies on (Jobs, Deployments, garbage collection) and a few charts use; the
# node, cloud and volume controllers stay off: there are no real nodes or volumes here.
CONTROLLERS = (
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "endpointslice-controller",
    "clusterrole-aggregation-controller",
)


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or become ready (its log file is named in the message)."""


def find_binaries(bin_dir: Path | None = None) -> Path | None:
    """The folder holding all control-plane binaries, or None if they have not been built."""
    folder = bin_dir or Path(os.environ.get(BIN_DIR_ENV, DEFAULT_BIN_DIR))
    return folder if all((folder / b).is_file() for b in BINARIES) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ControlPlane:
    """A throw-away cluster in `work_dir`. Use as a context manager or call start()/stop()."""

    work_dir: Path
    bin_dir: Path = field(default_factory=lambda: find_binaries() or DEFAULT_BIN_DIR)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    controllers: tuple[str, ...] = CONTROLLERS
    _procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list, repr=False)
    api_port: int = 0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "kubeconfig"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            self._wait_ready(timeout)
            self._write_kubeconfig(self.kubeconfig)
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.work_dir / f"{name}.log").open("wb")
        # New session: a Ctrl-C meant for the test runner doesn't kill the cluster under it mid-teardown.
        proc = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._procs.append((name, proc, log))

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a throw-away cluster: durability costs time and buys nothing.
                "--log-level=warn",
            ],
        )
        return url

    def _start_apiserver(self, etcd_url: str) -> None:
        key = self.work_dir / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        tokens = self.work_dir / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin,"system:masters"\n')
        self.api_port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--cert-dir={self.work_dir / 'certs'}",
                f"--secure-port={self.api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                "--authorization-mode=RBAC",
                f"--token-auth-file={tokens}",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=false",
                "--enable-priority-and-fairness=false",
                "--v=0",
            ],
        )

    def _wait_ready(self, timeout: float) -> None:
        # The API server writes its self-signed serving cert (and CA) before it listens.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            for name, proc, _ in self._procs:
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{name} exited with {proc.returncode}; see {self.work_dir}/{name}.log")
            try:
                with urllib.request.urlopen(request, context=insecure, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.5)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout}s: {last_error}")

    def _write_kubeconfig(self, path: Path) -> None:
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: moeops-dev
  cluster:
    server: {self.server}
    certificate-authority: {self.work_dir / "certs" / "apiserver.crt"}
users:
- name: admin
  user:
    token: {self.token}
contexts:
- name: moeops-dev
  context:
    cluster: moeops-dev
    user: admin
current-context: moeops-dev
"""
        )

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                f"--controllers={','.join(self.controllers)}",
                f"--service-account-private-key-file={self.work_dir / 'sa.key'}",
                "--use-service-account-credentials=false",
                "--secure-port=0",
                "--concurrent-job-syncs=10",
                "--v=0",
            ],
        )

    def stop(self) -> None:
        for _, proc, _ in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, log in reversed(self._procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            del name
        self._procs.clear()

    def logs(self, name: str) -> str:
        path = self.work_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def clean(self) -> None:
        self.stop()
        shutil.rmtree(self.work_dir, ignore_errors=True)
