"""Liveness and readiness of a long-running service, as plain values (pure: no NATS client, no HTTP server).

A `Heartbeat` is bumped by a loop that must keep going: the service's main loop (each fetch, poll or retry, also
while NATS is away) and the health server's own ticker on the event loop. A heartbeat silent for longer than its
limit makes the process not alive: `/healthz` answers 503 with the reason and the kubelet restarts the pod. A
heartbeat never bumped yet is starting, not stale: the main loop begins only once the first connection to NATS is
made, which may take as long as NATS is away, and restarting the process would not bring NATS back.

The limit is `stale_after_s` when set (MOEOPS_HEALTH_STALE_S), else `STALE_INTERVALS` intervals of the heartbeat
and at least `MIN_STALE_S`: a main loop may block that long on NATS requests timing out, and that is no hang.

Settings (names in `moeops.api.env`): MOEOPS_HEALTH_ADDR (default loopback: a local run exposes nothing; the chart
binds the pod IP), MOEOPS_HEALTH_PORT (default 0: a free port, logged, so that the components of a local platform
never collide; the chart names one), MOEOPS_HEALTH_STALE_S.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from moeops.api import env

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 0
STALE_INTERVALS = 10
MIN_STALE_S = 60.0


class Heartbeat:
    """When a loop last went round. `beat()` from the loop (thread-safe to read: one float written at a time)."""

    def __init__(self, what: str, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        """`what` names the loop in a reason ("carbon agent's poller"); `interval_s`: how often it beats when well."""
        if interval_s <= 0:
            raise ValueError(f"a heartbeat interval must be positive, not {interval_s}")
        self.what = what
        self.interval_s = interval_s
        self.clock = clock
        self.last: float | None = None
        self.beats = 0

    def beat(self) -> None:
        self.last = self.clock()
        self.beats += 1

    def limit_s(self, stale_after_s: float | None) -> float:
        """How long it may stay silent: `stale_after_s`, or the default of the module docstring."""
        if stale_after_s is not None:
            return stale_after_s
        return max(MIN_STALE_S, STALE_INTERVALS * self.interval_s)

    def stale_reason(self, stale_after_s: float | None) -> str | None:
        """Why the loop counts as hung (silent beyond its limit), or None while it beats or has not started."""
        if self.last is None:
            return None
        silent_s = self.clock() - self.last
        limit_s = self.limit_s(stale_after_s)
        if silent_s <= limit_s:
            return None
        return f"{self.what}: no progress for {silent_s:.1f} s (limit {limit_s:g} s)"


@dataclass(frozen=True)
class Verdict:
    """What a probe answers: ok, or the reasons it is not (one line each)."""

    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.reasons

    def body(self) -> str:
        return "ok\n" if self.ok else "".join(f"{reason}\n" for reason in self.reasons)


def liveness(heartbeats: Sequence[Heartbeat], stale_after_s: float | None) -> Verdict:
    """Alive while no heartbeat is stale."""
    return Verdict(tuple(r for beat in heartbeats if (r := beat.stale_reason(stale_after_s)) is not None))


@dataclass(frozen=True)
class HealthSettings:
    addr: str = DEFAULT_ADDR
    port: int = DEFAULT_PORT
    stale_after_s: float | None = None
    """None: each heartbeat's own limit (`Heartbeat.limit_s`)."""

    def __post_init__(self) -> None:
        if not self.addr.strip():
            raise ValueError(f"{env.HEALTH_ADDR} is empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{env.HEALTH_PORT} must be a port (0 for any free one), not {self.port}")
        if self.stale_after_s is not None and not (math.isfinite(self.stale_after_s) and self.stale_after_s > 0):
            raise ValueError(f"{env.HEALTH_STALE_S} must be a positive number of seconds, not {self.stale_after_s}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HealthSettings:
        """From MOEOPS_HEALTH_*; unset or empty keeps the default. Raises ValueError for a malformed value."""

        def text(key: str) -> str | None:
            return environ.get(key, "").strip() or None

        def number(key: str, parse: Callable[[str], float]) -> float | None:
            value = text(key)
            try:
                return parse(value) if value is not None else None
            except ValueError:
                raise ValueError(f"{key} must be a number, not {value!r}") from None

        port = number(env.HEALTH_PORT, int)
        return cls(
            addr=text(env.HEALTH_ADDR) or DEFAULT_ADDR,
            port=int(port) if port is not None else DEFAULT_PORT,
            stale_after_s=number(env.HEALTH_STALE_S, float),
        )


def add_health_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """--health-addr, --health-port and --health-stale-s, their defaults from MOEOPS_HEALTH_* in `environ`."""
    defaults = HealthSettings.from_env(environ)
    group = parser.add_argument_group("health endpoints (/healthz, /readyz)")
    group.add_argument("--health-addr", default=defaults.addr, help=f"bind address (env {env.HEALTH_ADDR})")
    group.add_argument("--health-port", type=int, default=defaults.port,
                       help=f"port; 0: any free one, logged (env {env.HEALTH_PORT})")  # fmt: skip
    group.add_argument("--health-stale-s", type=float, default=defaults.stale_after_s,
                       help=f"seconds without progress before /healthz fails (env {env.HEALTH_STALE_S})")  # fmt: skip


def health_settings(args: argparse.Namespace) -> HealthSettings:
    """The settings `add_health_arguments` parsed (ValueError when out of range)."""
    return HealthSettings(args.health_addr, args.health_port, args.health_stale_s)
