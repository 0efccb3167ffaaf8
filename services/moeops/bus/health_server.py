"""The health endpoints of a long-running service: `/healthz` (liveness) and `/readyz` (readiness) over HTTP.

    async with HealthServer(settings, "rebalancer", [service.heartbeat], [nats_connected(lambda: service.client)]):
        await service.run(stop)

The HTTP server runs on a thread of its own, not on the service's event loop: a loop blocked by a synchronous call
(an NVML read that hangs in the driver) still gets an answer, a 503 that says the loop is blocked, instead of a
probe that times out without a reason. Liveness reads heartbeats only (`health.liveness`): the service's main loop
and this server's ticker on the event loop. Readiness runs its checks on the event loop (they read the NATS client
there) and fails when they do not answer within `READY_TIMEOUT_S`. A check returns None when ready, else the reason.

Status codes: 200 with `ok`, or 503 with one reason a line; 404 for any other path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import nats.errors
from nats.aio.client import Client
from nats.js.errors import APIError

from .health import HealthSettings, Heartbeat, Verdict, liveness

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""A coroutine function run on the service's loop: None when ready, else why not."""

TICK_S = 0.5
"""How often the ticker on the event loop beats: the loop's own heartbeat."""
READY_TIMEOUT_S = 3.0
"""How long the readiness checks may take together (the chart's probe timeout is longer)."""
JETSTREAM_TIMEOUT_S = 2.0


def nats_connected(client: Callable[[], Client | None]) -> ReadinessCheck:
    """Ready while the service's NATS client (read when probed: the service connects after the server starts) is
    connected."""

    async def check() -> str | None:
        current = client()
        if current is None:
            return "NATS: not connected yet"
        if current.is_connected:
            return None
        state = "reconnecting" if current.is_reconnecting else "closed" if current.is_closed else "disconnected"
        return f"NATS: {state}"

    return check


def started(event: asyncio.Event, what: str) -> ReadinessCheck:
    """Ready once `event` is set (e.g. the service's consumer is in place)."""

    async def check() -> str | None:
        return None if event.is_set() else f"{what}: starting"

    return check


def jetstream_reachable(
    client: Callable[[], Client | None], *, streams: Sequence[str] = (), buckets: Sequence[str] = ()
) -> ReadinessCheck:
    """Ready while JetStream answers for each stream and KV bucket (a connected client whose server lost its
    JetStream, or whose stream is gone, is not ready)."""

    async def check() -> str | None:
        current = client()
        if current is None or not current.is_connected:
            return None  # nats_connected says so; one reason is enough
        js = current.jetstream(timeout=JETSTREAM_TIMEOUT_S)
        for kind, name, lookup in [("stream", s, js.stream_info) for s in streams] + [
            ("KV bucket", b, js.key_value) for b in buckets
        ]:
            try:
                await lookup(name)
            except (nats.errors.Error, APIError, TimeoutError, OSError) as exc:
                return f"NATS: {kind} {name} unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
        return None

    return check


class HealthServer:
    """Serves `/healthz` and `/readyz` while entered (`async with`, on the service's loop); see the module."""

    def __init__(
        self,
        settings: HealthSettings,
        name: str,
        heartbeats: Sequence[Heartbeat],
        readiness: Sequence[ReadinessCheck],
    ) -> None:
        self.settings = settings
        self.name = name
        self.loop_beat = Heartbeat(f"{name}'s event loop", TICK_S)
        self.heartbeats = [self.loop_beat, *heartbeats]
        self.readiness = list(readiness)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._answers: dict[str, Verdict] = {}
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose for port 0)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def alive(self) -> Verdict:
        return liveness(self.heartbeats, self.settings.stale_after_s)

    def ready(self) -> Verdict:
        """Runs the checks on the service's loop (called from the HTTP thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return Verdict(("not started",))
        future = asyncio.run_coroutine_threadsafe(self._check_ready(), loop)
        try:
            return future.result(READY_TIMEOUT_S)
        except FutureTimeout:
            future.cancel()
            return Verdict((f"{self.name}: the readiness checks did not answer within {READY_TIMEOUT_S:g} s",))

    def note(self, path: str, verdict: Verdict) -> None:
        """Log a probe's answer when it changes (not every probe: the kubelet asks every few seconds)."""
        with self._lock:
            before, self._answers[path] = self._answers.get(path), verdict
        if (before is None and verdict.ok) or before == verdict:
            return
        if verdict.ok:
            logger.info("%s %s: ok", self.name, path)
        else:  # not ready at start (NATS not connected yet) is no news
            level = logging.INFO if before is None else logging.WARNING
            logger.log(level, "%s %s: %s", self.name, path, "; ".join(verdict.reasons))

    async def _check_ready(self) -> Verdict:
        reasons = []
        for check in self.readiness:
            try:
                reason = await check()
            except Exception as exc:  # a failing check says not ready; it never breaks the probe
                reason = f"check failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                reasons.append(reason)
        return Verdict(tuple(reasons))

    async def __aenter__(self) -> HealthServer:
        self._loop = asyncio.get_running_loop()
        self.loop_beat.beat()
        self._ticker = asyncio.create_task(self._tick(), name=f"{self.name}-health-ticker")
        try:
            self._server = _server_for(self.settings.addr, self.settings.port, self)
        except OSError as exc:
            self._ticker.cancel()
            where = f"{self.settings.addr}:{self.settings.port}"
            raise OSError(f"{self.name}: cannot serve health on {where}: {exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.name}-health", daemon=True)
        self._thread.start()
        host = f"[{self.settings.addr}]" if ":" in self.settings.addr else self.settings.addr
        logger.info("%s: health on http://%s:%d/healthz and /readyz", self.name, host, self.port)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            # shutdown() waits for serve_forever to notice (up to its poll interval): not on the loop.
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()

    async def _tick(self) -> None:
        while True:
            self.loop_beat.beat()
            await asyncio.sleep(TICK_S)


def _server_for(addr: str, port: int, health: HealthServer) -> ThreadingHTTPServer:
    class Handler(_HealthHandler):
        server_health = health

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        daemon_threads = True

    return Server((addr, port), Handler)


class _HealthHandler(BaseHTTPRequestHandler):
    server_health: HealthServer
    server_version = "moeops-health"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            verdict = self.server_health.alive()
        elif path == "/readyz":
            verdict = self.server_health.ready()
        else:
            self._answer(HTTPStatus.NOT_FOUND, "not found: /healthz or /readyz\n")
            return
        self.server_health.note(path, verdict)
        self._answer(HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE, verdict.body())

    def _answer(self, status: HTTPStatus, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s health: " + format, self.server_health.name, *args)
