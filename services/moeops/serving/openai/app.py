"""The model server's HTTP app: OpenAI-compatible /v1/completions and /v1/chat/completions (JSON or server-sent
events) and /v1/models, with /healthz, /readyz and /metrics for Kubernetes and Prometheus.

Why FastAPI (on uvicorn): the pydantic request model is one schema for validation and for the OpenAPI document
(/openapi.json), which the API's fuzz tests generate bodies against; it is async on Starlette, so streaming is a
plain async generator; and both are widely used and actively maintained. The model itself runs on the engine's
own thread (engine.py), never on the event loop.

Every client mistake is a 4xx with an OpenAI-shaped message ({"error": {"message", "type", "param", "code"}}):
malformed JSON or a body that does not fit the schema → 400, an unknown model → 404, a body over the limit → 413
(before it is parsed), a prompt or max_tokens beyond the model's context → 400. 503 means not loaded yet, 429 that
the queue is full (with Retry-After), 504 that a request ran past the server's request timeout; a 500 would be a
bug, and the fuzz test (tests/unit/test_serving_fuzz.py) looks for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moeops import telemetry
from moeops.serving.decoding.engine import Engine
from moeops.serving.latency import LatencyRecorder
from moeops.serving.loader import ServedModel
from moeops.serving.openai.errors import error_response
from moeops.serving.openai.routes import add_error_handlers, router
from moeops.serving.openai.state import ServerSettings, ServerState
from moeops.serving.otel import RequestTimer, latency_export, register_engine

__all__ = ["BodyLimit", "ServerSettings", "ServerState", "create_app"]

logger = logging.getLogger(__name__)


class BodyLimit:
    """413 for a body over `limit` bytes, before anything parses it: a declared Content-Length is checked first,
    and a chunked body is counted as it arrives (then replayed to the app). 408 for a body that has not all
    arrived within `timeout_s`: a client that trickles its body (slowloris) holds a connection for that long only."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float | None = None) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request":
                        break
                    size += len(message.get("body", b""))
                    if size > self.limit:
                        await self._refuse(scope, receive, send)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            why = f"the request body did not arrive within {self.timeout_s:g} s"
            await error_response(408, why, code="body_timeout")(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
        await response(scope, receive, send)


def _load_sample(engine: Engine) -> Any:
    from moeops.serving.load_reporter import LoadSample

    s = engine.stats()
    return LoadSample(s.in_flight, s.queued, s.tokens_per_second, s.requests_per_second)


def lifespan_of(load: Callable[[], ServedModel], state: ServerState) -> Callable[[FastAPI], Any]:
    """The app's lifespan: load the model on a thread and start its engine (and the load reporter); stop both."""
    settings = state.settings

    async def start() -> None:
        try:
            served = await asyncio.to_thread(load)
        except Exception as exc:  # any load failure: not ready, and say why on /readyz and in the log
            logger.exception("cannot load the model")
            state.load_error = f"{type(exc).__name__}: {exc}"
            return
        engine = Engine(
            served.model,
            max_batch_size=settings.max_batch_size,
            max_latency_ms=settings.max_latency_ms,
            batched_matmuls=settings.batched_matmuls,
            max_queued=settings.max_queued,
        )
        engine.start()
        state.served, state.engine = served, engine
        logger.info("serving %s (step %d) from %s", served.name, served.step, served.checkpoint)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(start(), name="load-model")
        reporter = None
        if settings.service and settings.namespace:
            from moeops.serving.load_reporter import LoadReporter

            reporter = state.reporter = LoadReporter.from_environment(
                settings.service,
                settings.namespace,
                sample=lambda: _load_sample(state.engine) if state.engine else _idle_sample(),
            )
            if reporter is not None:
                reporter.start()
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            if reporter is not None:
                await reporter.stop()
            if state.engine is not None:
                await asyncio.to_thread(state.engine.stop)
            # uvicorn re-raises SIGTERM next, so serve_cli's shutdown never runs: export the last metrics here.
            await asyncio.to_thread(telemetry.flush)

    return lifespan


def create_app(load: Callable[[], ServedModel], settings: ServerSettings) -> FastAPI:
    """The app; `load` (run on a thread at start-up, while /healthz already answers) returns the model to serve."""
    meter = telemetry.meter("moeops.serving")
    state = ServerState(settings, latency=LatencyRecorder(latency_export(meter)))
    app = FastAPI(title="moeops model server", version="v1", lifespan=lifespan_of(load, state))
    app.state.server = state  # the routes' `server_state`
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestTimer)  # OpenTelemetry (no-op unless the process set it up: serve_cli)
    app.state.instruments = register_engine(
        meter,
        lambda: (state.engine.stats(), state.served.name) if state.engine and state.served else None,
    )
    add_error_handlers(app)
    app.include_router(router)
    return app


def _idle_sample() -> Any:
    from moeops.serving.load_reporter import LoadSample

    return LoadSample(0)
