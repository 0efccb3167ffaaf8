"""Readiness and liveness probes, as the kubelet runs them: httpGet, tcpSocket and exec, against the pod's
address, with initialDelaySeconds, periodSeconds, timeoutSeconds and the failure/success thresholds."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _port(value: Any, ports: Mapping[str, int]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    if str(value) not in ports:
        raise ValueError(f"probe names port {value!r}, which the container does not declare")
    return ports[str(value)]


def run_once(probe: Mapping[str, Any], address: str, ports: Mapping[str, int], pid: int | None) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            connection = http.client.HTTPConnection(
                get.get("host") or address, _port(get["port"], ports), timeout=timeout
            )
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                connection.request("GET", get.get("path", "/"), headers=headers)
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
        if "tcpSocket" in probe:
            with socket.create_connection((address, _port(probe["tcpSocket"]["port"], ports)), timeout=timeout):
                return True
        if "exec" in probe and pid is not None:
            # Into the container's mount and UTS namespaces and its root, as the container's own process.
            command = [
                "nsenter",
                f"--target={pid}",
                "--mount",
                "--uts",
                "--root",
                "--wd",
                "--",
                *probe["exec"]["command"],
            ]
            return subprocess.run(command, capture_output=True, timeout=timeout, check=False).returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException):
        return False
    return False


@dataclass
class ProbeState:
    """One probe of one container: when it runs next, and the verdict its thresholds give so far."""

    probe: Mapping[str, Any]
    started_at: float
    healthy: bool
    _next: float = 0.0
    _streak: int = field(default=0)
    _last: bool | None = None

    def due(self, now: float) -> bool:
        if now < self.started_at + float(self.probe.get("initialDelaySeconds", 0)):
            return False
        return now >= self._next

    def record(self, ok: bool, now: float) -> bool:
        """Feed one result; returns True when the verdict changed."""
        self._next = now + float(self.probe.get("periodSeconds", 10))
        self._streak = self._streak + 1 if ok == self._last else 1
        self._last = ok
        needed = int(self.probe.get("successThreshold" if ok else "failureThreshold", 1 if ok else 3))
        if ok != self.healthy and self._streak >= needed:
            self.healthy = ok
            return True
        return False


def new_states(container: Mapping[str, Any]) -> tuple[ProbeState | None, ProbeState | None]:
    """(readiness, liveness) of a container that starts now: not ready until a probe passes, live until it fails."""
    now = time.monotonic()
    readiness = container.get("readinessProbe")
    liveness = container.get("livenessProbe")
    return (
        ProbeState(readiness, now, healthy=False) if readiness else None,
        ProbeState(liveness, now, healthy=True) if liveness else None,
    )
