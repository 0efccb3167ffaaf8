"""How a moeops process connects to NATS in production: options from the environment, mapped onto nats-py.

Environment (names in `moeops.api.env`; the paths are files mounted from Secrets):

    MOEOPS_NATS_URL         comma-separated server URLs (default nats://localhost:4222); user:pass@ may be in a URL
    MOEOPS_NATS_TOKEN       an auth token
    MOEOPS_NATS_CREDS       path of a .creds file (user JWT + nkey seed, decentralised auth)
    MOEOPS_NATS_NKEY_SEED   path of an nkey seed file (at most one of token, creds and nkey seed)
    MOEOPS_NATS_TLS_CA      path of the CA bundle that signed the servers' certificates
    MOEOPS_NATS_TLS_CERT    path of a client certificate for mutual TLS (needs MOEOPS_NATS_TLS_KEY)
    MOEOPS_NATS_TLS_KEY     path of its private key

The client upgrades to TLS when the server requires it; enforcing TLS is the server's configuration.

Reconnects never give up. After losing a server the client waits an exponential, jittered delay (half to all of
`reconnect_wait_s * 2**attempt`, capped at `reconnect_wait_max_s`) before trying the least-tried server of the
pool, so a thousand workers that lost the same server don't return in lockstep. nats-py retries a first connect
every `reconnect_time_wait` (no backoff hook there), which we jitter once per process for the same reason.
Callbacks log and never raise: a callback's exception would surface inside nats-py's reader task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client, Server

from moeops.api import env

from .loop_thread import cancel_until_done

DEFAULT_URL = "nats://localhost:4222"
MAX_BACKOFF_DOUBLINGS = 30  # 2**30 × any sane base is far beyond every cap: stop the float growing.

logger = logging.getLogger(__name__)


class BusConfigError(ValueError):
    """The NATS settings in the environment contradict each other or name files that don't exist."""


@dataclass(frozen=True)
class ConnectionOptions:
    servers: tuple[str, ...] = (DEFAULT_URL,)
    name: str = "moeops"
    """Shown in the server's connection list (`/connz`): say who connects, e.g. the pod name."""
    token: str | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 1.0
    reconnect_wait_max_s: float = 10.0
    ping_interval_s: int = 10
    """With `max_outstanding_pings`, how soon a silently dead server is noticed (nats-py's default: 4 minutes)."""
    max_outstanding_pings: int = 3
    reconnect_buffer_bytes: int = 2 * 1024 * 1024
    """What the client holds of publishes made while it reconnects (nats-py's `pending_size`)."""

    def __post_init__(self) -> None:
        if not self.servers or not all(url.strip() for url in self.servers):
            raise BusConfigError(f"{env.NATS_URL} names no server")
        if sum(x is not None for x in (self.token, self.creds_file, self.nkey_seed_file)) > 1:
            raise BusConfigError(
                f"set at most one of {env.NATS_TOKEN}, {env.NATS_CREDS} and {env.NATS_NKEY_SEED}: the server "
                "accepts one identity"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise BusConfigError(f"{env.NATS_TLS_CERT} and {env.NATS_TLS_KEY} go together (mutual TLS)")
        for path in (self.creds_file, self.nkey_seed_file, self.tls_ca_file, self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise BusConfigError(f"{path} does not exist or is not a file")
        if min(self.connect_timeout_s, self.reconnect_wait_s, self.reconnect_wait_max_s) <= 0:
            raise BusConfigError("connect and reconnect times must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, name: str = "moeops") -> ConnectionOptions:
        """Options from MOEOPS_NATS_* (os.environ by default); unset or empty variables keep the defaults."""
        values = os.environ if environ is None else environ

        def text(key: str) -> str | None:
            return values.get(key, "").strip() or None

        def path(key: str) -> Path | None:
            value = text(key)
            return Path(value) if value is not None else None

        url = text(env.NATS_URL)
        servers = tuple(part.strip() for part in url.split(",")) if url else (DEFAULT_URL,)
        return cls(
            servers=servers,
            name=name,
            token=text(env.NATS_TOKEN),
            creds_file=path(env.NATS_CREDS),
            nkey_seed_file=path(env.NATS_NKEY_SEED),
            tls_ca_file=path(env.NATS_TLS_CA),
            tls_cert_file=path(env.NATS_TLS_CERT),
            tls_key_file=path(env.NATS_TLS_KEY),
        )

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca_file is not None or self.tls_cert_file is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def connect_kwargs(self, rng: random.Random | None = None, log: ConnectionLog | None = None) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` (callbacks included)."""
        rng = rng or random.Random()
        log = log or ConnectionLog(self.name)
        kwargs: dict[str, Any] = {
            "servers": list(self.servers),
            "name": self.name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # never give up: the bus returns, and the worker must not notice
            "connect_timeout": self.connect_timeout_s,
            "reconnect_time_wait": jittered(self.reconnect_wait_s, rng),
            "reconnect_to_server_handler": backoff_handler(self.reconnect_wait_s, self.reconnect_wait_max_s, rng),
            "ping_interval": self.ping_interval_s,
            "max_outstanding_pings": self.max_outstanding_pings,
            "pending_size": self.reconnect_buffer_bytes,
            "error_cb": log.error,
            "disconnected_cb": log.disconnected,
            "reconnected_cb": log.reconnected,
            "closed_cb": log.closed,
        }
        if self.token is not None:
            kwargs["token"] = self.token
        if self.creds_file is not None:
            kwargs["user_credentials"] = str(self.creds_file)
        if self.nkey_seed_file is not None:
            kwargs["nkeys_seed"] = str(self.nkey_seed_file)
        if (context := self.ssl_context()) is not None:
            kwargs["tls"] = context
        return kwargs


def jittered(delay_s: float, rng: random.Random) -> float:
    """Half to all of `delay_s`, uniformly: clients that failed together retry apart."""
    return delay_s * rng.uniform(0.5, 1.0)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    return jittered(min(max_s, base_s * 2 ** min(attempt, MAX_BACKOFF_DOUBLINGS)), rng)


def backoff_handler(
    base_s: float, max_s: float, rng: random.Random
) -> Callable[[list[Server], dict[str, Any]], tuple[Server | None, float]]:
    """nats-py's reconnect hook: the least-tried server next, after a delay growing with its failed attempts."""

    def choose(servers: list[Server], _server_info: dict[str, Any]) -> tuple[Server | None, float]:
        server = min(servers, key=lambda s: s.reconnects)
        return server, backoff_delay(server.reconnects, base_s, max_s, rng)

    return choose


class ConnectionLog:
    """Connection events as log lines: one warning per kind of error until the connection is back, not one per
    retry (a worker retrying for an hour would otherwise write thousands of identical lines)."""

    def __init__(self, name: str, client: Client | None = None) -> None:
        self._name = name
        self._client = client
        """When known, a disconnect caused by our own close() is not reported as a loss."""
        self._reported: set[str] = set()

    async def error(self, exc: Exception) -> None:
        kind = type(exc).__name__
        level = logging.DEBUG if kind in self._reported else logging.WARNING
        self._reported.add(kind)
        logger.log(level, "NATS %s: %s: %s", self._name, kind, exc)

    async def disconnected(self) -> None:
        if self._client is not None and self._client.is_closed:
            return  # closed on purpose; `closed` says so
        logger.warning("NATS %s: disconnected; reconnecting in the background", self._name)

    async def reconnected(self) -> None:
        self._reported.clear()
        logger.info("NATS %s: reconnected", self._name)

    async def closed(self) -> None:
        logger.info("NATS %s: connection closed", self._name)


async def connect(options: ConnectionOptions) -> Client:
    """A connected client; while no server answers it keeps trying. Cancelling the caller stops it for sure: the
    attempt runs as a task of its own, cancelled until it ends (nats-py can lose one cancellation; see
    loop_thread), and a connection made just as the caller was cancelled is closed, not leaked."""
    client = Client()
    attempt = asyncio.ensure_future(client.connect(**options.connect_kwargs(log=ConnectionLog(options.name, client))))
    try:
        await asyncio.shield(attempt)
    except asyncio.CancelledError:
        await cancel_until_done(attempt)
        if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
            with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                await asyncio.wait_for(client.close(), 1.0)
        raise
    return client
