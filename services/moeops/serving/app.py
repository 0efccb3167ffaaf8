"""The model server's HTTP app: OpenAI-compatible /v1/completions (JSON or server-sent events) and /v1/models, with
/healthz, /readyz and /metrics for Kubernetes and Prometheus.

Why FastAPI (on uvicorn): the pydantic request model is one schema for validation and for the OpenAPI document
(/openapi.json), which the API's fuzz tests generate bodies against; it is async on Starlette, so streaming is a
plain async generator; and both are widely used and actively maintained. The model itself runs on the engine's
own thread (engine.py), never on the event loop.

Every client mistake is a 4xx with an OpenAI-shaped message ({"error": {"message", "type", "param", "code"}}):
malformed JSON or a body that does not fit the schema → 400, an unknown model → 404, a body over the limit → 413
(before it is parsed), a prompt or max_tokens beyond the model's context → 400. 503 means not loaded yet (or the
queue is full); a 500 would be a bug, and the fuzz test (tests/unit/test_serving_fuzz.py) looks for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moeops import telemetry

from .api_models import CompletionRequest, ErrorBody, ModelCard, ModelList
from .completions import ClientError, complete, error_response, plan, stream, submit
from .early_exit import ExitPolicy
from .engine import Engine
from .loader import ServedModel
from .otel import RequestTimer, register_engine

if TYPE_CHECKING:
    from .load_reporter import LoadReporter

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    policy: ExitPolicy
    """The service's early exit (InferenceService spec.earlyExit); a request may override it."""
    max_batch_size: int = 16
    max_latency_ms: float = 10.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    batched_matmuls: bool = True
    """Full-depth sequences of a round in one pass (engine.py); False: batching of scheduling only."""
    service: str | None = None
    """The InferenceService and namespace, for the load reporter (None: no reporting)."""
    namespace: str | None = None


@dataclass
class ServerState:
    settings: ServerSettings
    served: ServedModel | None = None
    engine: Engine | None = None
    load_error: str | None = None
    reporter: LoadReporter | None = None
    """Publishes this server's load on NATS for the autoscaler (load_reporter.py), when MOEOPS_NATS_URL is set."""
    started: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.served is not None and self.engine is not None and self.engine.running


class BodyLimit:
    """413 for a body over `limit` bytes, before anything parses it: a declared Content-Length is checked first,
    and a chunked body is counted as it arrives (then replayed to the app)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

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

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
        await response(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = list(exc.errors())
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}", where


def _load_sample(engine: Engine) -> Any:
    from .load_reporter import LoadSample

    s = engine.stats()
    return LoadSample(s.in_flight, s.queued, s.tokens_per_second, s.requests_per_second)


def create_app(load: Callable[[], ServedModel], settings: ServerSettings) -> FastAPI:
    """The app; `load` (run on a thread at start-up, while /healthz already answers) returns the model to serve."""
    state = ServerState(settings)

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
        )
        engine.start()
        state.served, state.engine = served, engine
        logger.info("serving %s (step %d) from %s", served.name, served.step, served.checkpoint)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(start(), name="load-model")
        reporter = None
        if settings.service and settings.namespace:
            from .load_reporter import LoadReporter

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

    app = FastAPI(title="moeops model server", version="v1", lifespan=lifespan)
    app.state.server = state
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestTimer)  # OpenTelemetry (no-op unless the process set it up: serve_cli)
    app.state.instruments = register_engine(
        telemetry.meter("moeops.serving"),
        lambda: (state.engine.stats(), state.served.name) if state.engine and state.served else None,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        """Not the client's fault (those are all handled above): a bug, logged; the fuzz tests look for these."""
        logger.error("unhandled error", exc_info=exc)
        return error_response(500, f"internal server error ({type(exc).__name__}): please report it")

    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 413, 503)}

    @app.post("/v1/completions", responses=errors)
    async def completions(body: CompletionRequest) -> Response:
        """A completion of `prompt`, greedy, with the service's early exit or the request's `early_exit`."""
        served = state.served
        if served is None or not state.ready:
            raise ClientError(503, state.load_error or "the model is not loaded yet: retry when /readyz answers 200")
        p = plan(body, served, settings.policy)
        handle = submit(state.engine, served.codec, p)
        return stream(handle, p, served) if body.stream else await complete(handle, p, served)

    @app.get("/v1/models")
    async def models() -> ModelList:
        served = state.served
        if served is None:
            return ModelList(data=[])
        card = ModelCard(id=served.name, created=int(state.started), context_length=served.context,
                         checkpoint_step=served.step)  # fmt: skip
        return ModelList(data=[card])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """The model is loaded and its worker is running (readiness)."""
        if state.ready and state.served is not None:
            return JSONResponse({"status": "ready", "model": state.served.name, "step": state.served.step})
        if state.engine is not None and state.engine.error:
            return JSONResponse({"status": "failed", "error": state.engine.error}, status_code=503)
        if state.load_error:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        """Prometheus text format: the engine's load and batching counters."""
        return _prometheus(state)

    return app


def _idle_sample() -> Any:
    from .load_reporter import LoadSample

    return LoadSample(0)


def _prometheus(state: ServerState) -> str:
    lines = [f"moeops_server_ready {int(state.ready)}"]
    if state.engine is not None:
        s = state.engine.stats()
        gauges = {
            "in_flight": s.in_flight, "queued": s.queued, "tokens_per_second": s.tokens_per_second,
            "requests_per_second": s.requests_per_second,
            "mean_exit_layer": s.mean_exit_layer if s.mean_exit_layer is not None else float("nan"),
            "max_round_size": s.max_round_size,
        }  # fmt: skip
        counters = {"tokens_generated": s.tokens_generated, "requests_completed": s.requests_completed,
                    "rounds": s.rounds, "batched_rounds": s.batched_rounds}  # fmt: skip
        for name, value in gauges.items():
            lines += [f"# TYPE moeops_server_{name} gauge", f"moeops_server_{name} {value}"]
        for name, value in counters.items():
            lines += [f"# TYPE moeops_server_{name}_total counter", f"moeops_server_{name}_total {value}"]
    return "\n".join(lines) + "\n"
