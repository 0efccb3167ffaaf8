"""SIGTERM while a service still retries its first connect to an unreachable NATS: it ends at once, not after the
kubelet's grace period (it used to wait for a connect that never came, and was SIGKILLed).

The NATS URL names a loopback port held by a bound socket that never listens: every connect is refused, and no other
process can take the port during the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moeops.api import env

EXIT_WITHIN_S = 5.0
"""Far below the 30 s grace period; the process needs well under 1 s here."""


@pytest.fixture
def refused_url() -> Iterator[str]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        yield f"nats://127.0.0.1:{held.getsockname()[1]}"


def _wait_for_line(log: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} within {timeout_s} s; log:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["-m", "moeops.rebalancer"], "rebalancer"),
        (["-m", "moeops.carbon", "aggregator"], "carbon aggregator"),
    ],
    ids=["rebalancer", "carbon-aggregator"],
)
def test_sigterm_while_connecting_ends_the_service(
    refused_url: str, tmp_path: Path, args: list[str], what: str
) -> None:
    log = tmp_path / "service.log"
    environ = {**os.environ, env.NATS_URL: refused_url, env.HEALTH_PORT: "0"}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=environ)
    try:
        _wait_for_line(log, "ConnectionRefusedError", 30.0)  # in the connect-retry phase (slow imports on a busy CI)
        time.sleep(1.0)  # a few retries in
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=EXIT_WITHIN_S + 5)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text(errors="replace")
    assert code in (0, -signal.SIGTERM), text
    assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after SIGTERM\n{text}"
    assert f"{what}: SIGTERM received; stopping" in text
    assert "Traceback" not in text, text
