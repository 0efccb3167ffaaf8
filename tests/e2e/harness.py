"""Helpers of the e2e suite: polling, the real kubectl, read access to the cluster, the operator process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from moeops.devcluster.controlplane import DEFAULT_BIN_DIR, free_port

T = TypeVar("T")
Objects = list[dict[str, Any]]  # a name of its own: inside Cluster, `list` is the method


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Kubectl:
    """The real kubectl binary against the test cluster."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        binary = shutil.which("kubectl", path=f"{DEFAULT_BIN_DIR}:{os.environ.get('PATH', '')}")
        if not binary:
            raise RuntimeError("kubectl not found: run `python hack/fetch_kube_clients.py`")
        self.binary = binary

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(
        self, manifest: dict[str, Any] | str, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self("apply", "-f", "-", *extra, stdin=text, check=check)


class Cluster:
    """Read access for assertions, through the official client (plain dicts)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.batch = kubernetes.client.BatchV1Api(self.api_client)
        self.apps = kubernetes.client.AppsV1Api(self.api_client)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.kubectl = Kubectl(kubeconfig)

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return dict(json.loads(response.data))

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A moeops custom resource, or None."""
        try:
            return self._json(
                self.custom.get_namespaced_custom_object(
                    "moeops.dev", "v1alpha1", namespace, plural, name, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return (self.get(plural, namespace, name) or {}).get("status") or {}

    def status_if(
        self, plural: str, namespace: str, name: str, ready: Callable[[dict[str, Any]], object]
    ) -> dict[str, Any] | None:
        """The status once `ready(status)` holds, else None: a probe for wait_for."""
        status = self.status(plural, namespace, name)
        return status if ready(status) else None

    def condition(self, plural: str, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
        conds = self.status(plural, namespace, name).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        reader = {
            "Job": self.batch.read_namespaced_job,
            "ConfigMap": self.core.read_namespaced_config_map,
            "Service": self.core.read_namespaced_service,
            "Deployment": self.apps.read_namespaced_deployment,
        }[kind]
        try:
            return self._json(reader(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def absent(self, kind: str, namespace: str, name: str) -> bool:
        return self.read(kind, namespace, name) is None

    def list(self, kind: str, namespace: str, selector: str = "") -> Objects:
        lister = {
            "Job": self.batch.list_namespaced_job,
            "ConfigMap": self.core.list_namespaced_config_map,
            "Service": self.core.list_namespaced_service,
            "Pod": self.core.list_namespaced_pod,
            "Deployment": self.apps.list_namespaced_deployment,
            "Event": self.core.list_namespaced_event,
        }[kind]
        return list(self._json(lister(namespace, label_selector=selector, _preload_content=False))["items"])

    def events(self, namespace: str, name: str) -> Objects:
        return [e for e in self.list("Event", namespace) if e["involvedObject"].get("name") == name]


class OperatorProcess:
    """`moeops operator run` as a child process, the way it runs in a pod."""

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        *,
        standalone: bool = True,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.extra_env = env or {}
        self.extra_args = args  # more `moeops operator run` options, e.g. ("--namespace", "team-a")
        self.log_dir = log_dir
        self.standalone = standalone
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        port = free_port()
        self.starts += 1
        self.log_file = log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **self.extra_env}
        cmd = [sys.executable, "-m", "moeops.cli", "operator", "run", "--log-format", "json",
               "--liveness", f"http://127.0.0.1:{port}/healthz"]  # fmt: skip
        if self.standalone:
            cmd.append("--standalone")
        cmd.extend(self.extra_args)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    status: int = response.status
                    return status == 200
            except OSError:
                return False

        wait_for("the operator's liveness endpoint", healthy, timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    def records(self) -> list[dict[str, Any]]:
        """The operator's JSON log records (lines that are not JSON, e.g. tracebacks, are skipped)."""
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def log(self) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""
