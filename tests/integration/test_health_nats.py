"""Health endpoints of the long-running services against a real nats-server: the rebalancer, the carbon aggregator
and the carbon agent run as the processes the chart starts (`python -m moeops.rebalancer`, `python -m moeops.carbon
aggregator|agent`). /readyz follows their NATS connection through a server stop and restart while /healthz stays
200 (NATS away is no reason to restart them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from polling import wait_until

from moeops.api import env
from moeops.carbon import cli as carbon_cli
from moeops.devcluster.nats_server import NatsServer

pytestmark = [pytest.mark.nats, pytest.mark.slow]  # three Python processes and a NATS restart: ~15 s


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def probe(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, why) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def status(self, path: str) -> int:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log.read_text()}")
        return probe(self.port, path)[0]

    def answer(self, path: str) -> str:
        return probe(self.port, path)[1]

    def answers(self, path: str, status: int) -> Callable[[], bool]:
        return lambda: self.status(path) == status


@pytest.fixture
def services(nats_server: NatsServer, tmp_path: Path) -> Iterator[list[Service]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MOEOPS_"))}
    base |= {env.NATS_URL: nats_server.url, env.HEALTH_ADDR: "127.0.0.1", "KUBERNETES_SERVICE_HOST": "",
             "KUBECONFIG": str(tmp_path / "no-kubeconfig")}  # fmt: skip
    agent = {env.NODE_NAME: "node-a", env.CARBON_REGION: "world", carbon_cli.CARBON_GPUS: "none",
             carbon_cli.CARBON_SPOOL_DIR: str(tmp_path / "spool"),
             carbon_cli.CARBON_CGROUP_ROOT: str(tmp_path)}  # fmt: skip
    commands = {
        "rebalancer": ([sys.executable, "-m", "moeops.rebalancer"], {}),
        "carbon-aggregator": ([sys.executable, "-m", "moeops.carbon", "aggregator"], {}),
        "carbon-agent": ([sys.executable, "-m", "moeops.carbon", "agent"], agent),
    }
    started: list[Service] = []
    try:
        for name, (command, extra) in commands.items():
            port, log = free_port(), tmp_path / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(command, env={**base, **extra, env.HEALTH_PORT: str(port)},
                                           stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
            started.append(Service(name, process, port, log))
        yield started
    finally:
        for service in started:
            service.process.terminate()
        for service in started:
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


def test_readyz_follows_nats_through_a_restart_and_healthz_stays_ok(
    nats_server: NatsServer, services: list[Service]
) -> None:
    for service in services:
        wait_until(service.answers("/readyz", 200), f"{service.name} ready", timeout_s=60)
        assert service.status("/healthz") == 200, service.answer("/healthz")
        assert service.answer("/readyz") == "ok\n"
        assert service.status("/metrics") == 404

    nats_server.stop()
    stopped = time.monotonic()
    for service in services:
        wait_until(service.answers("/readyz", 503), f"{service.name} not ready", timeout_s=5)
    assert time.monotonic() - stopped < 5
    for service in services:
        assert "NATS: " in service.answer("/readyz"), (service.name, service.answer("/readyz"))
    time.sleep(3)  # NATS stays away a while: the main loops go on (retrying), and liveness holds
    for service in services:
        assert service.status("/readyz") == 503
        assert service.status("/healthz") == 200, (service.name, service.answer("/healthz"))

    nats_server.start()
    for service in services:
        # The clients' reconnect backoff is jittered up to 10 s.
        wait_until(service.answers("/readyz", 200), f"{service.name} ready again", timeout_s=30)
        assert service.status("/healthz") == 200
