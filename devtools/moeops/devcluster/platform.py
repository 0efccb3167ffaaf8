"""The whole platform on this machine, for `make demo` and the journey tests: one way to start it, used by both.

Control plane (etcd, kube-apiserver, kube-controller-manager) with the CRDs, nats-server with JetStream, the
operator, the rebalancer, the carbon aggregator and node agent, and the process node — each a process of its own
with a log file in `work_dir`, as each would be a pod (or a host service) on a real cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from .controlplane import DEFAULT_BIN_DIR, ControlPlane, free_port
from .nats_server import NatsServer
from .processes import Component, PlatformError, wait_until

REPO = Path(__file__).resolve().parents[3]


@dataclass
class LocalPlatform:
    work_dir: Path
    operator_env: dict[str, str] = field(default_factory=dict)
    with_carbon: bool = True
    plane: ControlPlane | None = None
    nats: NatsServer | None = None
    components: dict[str, Component] = field(default_factory=dict)
    carbon: Any = None  # carbon_stack's handles (stop())

    @property
    def kubeconfig(self) -> Path:
        assert self.plane is not None
        return self.plane.kubeconfig

    @property
    def node_state(self) -> Path:
        return self.work_dir / "node"

    def kubectl(self, *args: str, check: bool = True) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run([str(DEFAULT_BIN_DIR / "kubectl"), *args], env=env, capture_output=True, text=True,
                                timeout=120, check=False)  # fmt: skip
        if check and result.returncode != 0:
            raise PlatformError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def __enter__(self) -> LocalPlatform:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.plane = ControlPlane(self.work_dir / "controlplane")
            self.plane.start()
            self.kubectl("apply", "-f", str(REPO / "crds"))
            self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            wait_until("API discovery of moeops.dev", lambda: "moetrainingjobs" in self.kubectl(
                "api-resources", "--api-group=moeops.dev", check=False), 60)  # fmt: skip
            self.nats = NatsServer(self.work_dir / "nats")
            self.nats.start()
            self._start_node()
            self._start_operator()
            self._start("rebalancer", [sys.executable, "-m", "moeops.rebalancer"],
                        {"MOEOPS_NATS_URL": self.nats.url})  # fmt: skip
            if self.with_carbon:
                self._start_carbon()
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> Component:
        component = self.components[name] = Component(name, argv, self.work_dir / f"{name}.log", env)
        component.start()
        return component

    def _start_node(self) -> None:
        node = self._start("node", [sys.executable, "-m", "moeops.devcluster.node", "--kubeconfig",
                                    str(self.kubeconfig), "--state-dir", str(self.node_state)], {})  # fmt: skip
        core = kubernetes.client.CoreV1Api(self.api_client())

        def ready() -> bool:
            nodes = core.list_node().items
            return any(n.metadata.labels.get("moeops.dev/process-node") == "true" for n in nodes)

        wait_until("the process node", ready, 60, node.check)

    def _start_operator(self) -> None:
        assert self.nats is not None
        port = free_port()
        # Pods share this machine's network: a free rendezvous port keeps a second platform's jobs apart.
        env = {"KUBECONFIG": str(self.kubeconfig), "MOEOPS_NATS_URL": self.nats.url,
               "MOEOPS_RENDEZVOUS_PORT": str(free_port()), **self.operator_env}  # fmt: skip
        operator = self._start("operator", [sys.executable, "-m", "moeops.cli", "operator", "run", "--standalone",
                                            "--liveness", f"http://127.0.0.1:{port}/healthz"], env)  # fmt: skip

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_until("the operator's liveness endpoint", healthy, 90, operator.check)

    def _start_carbon(self) -> None:
        """The carbon aggregator and this node's agent (moeops.devcluster.carbon_stack)."""
        from . import carbon_stack  # only when carbon accounting is wanted

        assert self.nats is not None
        self.carbon = carbon_stack.start_carbon(self.kubeconfig, self.nats.url, "process-node-0", self.work_dir)

    def check(self) -> None:
        """Raise if any component died."""
        for component in self.components.values():
            component.check()

    def stop(self) -> None:
        for name in ("operator", "rebalancer"):
            if name in self.components:
                self.components[name].stop()
        if self.carbon is not None:
            self.carbon.stop()
        if "node" in self.components:
            self.components["node"].stop(timeout_s=60)
        if self.nats is not None:
            self.nats.stop()
        if self.plane is not None:
            self.plane.stop()
