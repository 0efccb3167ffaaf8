"""The model server's routes and error handlers: /v1/completions, /v1/chat/completions, /v1/models (and one by its
id), /healthz, /readyz and /metrics.

Each route reads the server's state (`state.ServerState`, on `app.state.server`) through the `server_state`
dependency; every client mistake becomes an OpenAI-shaped 4xx (app.py says which), anything else a logged 500.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from moeops.serving.loader import ServedModel
from moeops.serving.openai import chat, completions
from moeops.serving.openai.api_models import CompletionRequest, ErrorBody, ModelCard, ModelList
from moeops.serving.openai.chat_models import ChatCompletionRequest
from moeops.serving.openai.errors import ClientError, error_response
from moeops.serving.openai.generation import RunContext, submit
from moeops.serving.openai.plans import plan_chat, plan_completion
from moeops.serving.openai.state import ServerState

logger = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 413, 429, 503, 504)}
"""The error responses /v1/completions documents in the OpenAPI schema."""

router = APIRouter()


def server_state(request: Request) -> ServerState:
    return request.app.state.server  # type: ignore[no-any-return]


State = Annotated[ServerState, Depends(server_state)]


def _ready(state: ServerState) -> ServedModel:
    served = state.served
    if served is None or not state.ready:
        raise ClientError(503, state.load_error or "the model is not loaded yet: retry when /readyz answers 200")
    return served


async def _answer(body: CompletionRequest | ChatCompletionRequest, state: ServerState, request: Request) -> Response:
    """Plan the request, queue its choices (or ClientError: 429, 503) and answer as JSON or a stream."""
    served = _ready(state)
    if isinstance(body, ChatCompletionRequest):
        p, operation, answer, streamed = (
            plan_chat(body, served, state.settings.policy),
            "chat",
            chat.complete,
            chat.stream,
        )
    else:
        p, operation = plan_completion(body, served, state.settings.policy), "text_completion"
        answer, streamed = completions.complete, completions.stream
    handles = submit(state.engine, served.codec, p)
    ctx = RunContext(state.settings.request_timeout_s, state.latency, operation, served.name)
    return streamed(handles, p, served, ctx) if body.stream else await answer(request, handles, p, served, ctx)


@router.post("/v1/completions", responses=ERRORS)
async def create_completion(body: CompletionRequest, state: State, request: Request) -> Response:
    """Completions of `prompt` (greedy, or sampled with temperature), with the service's early exit or the
    request's `early_exit`."""
    return await _answer(body, state, request)


@router.post("/v1/chat/completions", responses=ERRORS)
async def create_chat_completion(body: ChatCompletionRequest, state: State, request: Request) -> Response:
    """The assistant's next message after `messages`, rendered into one prompt by the model's chat template."""
    return await _answer(body, state, request)


def _card(state: ServerState, served: ServedModel) -> ModelCard:
    return ModelCard(id=served.name, created=int(state.started), context_length=served.context,
                     checkpoint_step=served.step, max_model_len=served.context)  # fmt: skip


@router.get("/v1/models")
async def models(state: State) -> ModelList:
    served = state.served
    return ModelList(data=[] if served is None else [_card(state, served)])


@router.get("/v1/models/{model_id:path}", responses={404: {"model": ErrorBody}})
async def model(model_id: str, state: State) -> ModelCard:
    served = state.served
    if served is None or served.name != model_id:
        raise ClientError(404, f"The model {model_id!r} does not exist", "model", "model_not_found")
    return _card(state, served)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """The model is loaded and its worker is running (readiness)."""
    if state.ready and state.served is not None:
        return JSONResponse({"status": "ready", "model": state.served.name, "step": state.served.step})
    if state.engine is not None and state.engine.error:
        return JSONResponse({"status": "failed", "error": state.engine.error}, status_code=503)
    if state.load_error:
        return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> str:
    """Prometheus text format: the engine's load and batching counters, and the latency histograms (latency.py)."""
    return prometheus_text(state)


def add_error_handlers(app: FastAPI) -> None:
    """Client mistakes as OpenAI-shaped 4xx responses; anything else a logged 500."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        """Not the client's fault (those are all handled above): a bug, logged; the fuzz tests look for these."""
        logger.error("unhandled error", exc_info=exc)
        return error_response(500, f"internal server error ({type(exc).__name__}): please report it")


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a request body the schema refuses, and the field it is about (None: the body).

    A field that takes one of several types (`stop`: a string or a list of them) fails once per type; the problem
    named is the one of the type the client sent (a list's, for a list), and pydantic's tags for the types
    ("constrained-str", "list[int]") are left out of the field's path."""
    errors = list(exc.errors())
    if not errors:
        return "invalid request body", None
    if errors[0].get("type") == "json_invalid":
        first = errors[0]
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    body = exc.body if isinstance(exc.body, dict) else {}
    first = next((e for e in errors if _of_the_sent_type(e.get("loc", ()), body)), errors[0])
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _type_tag(p)]
    where = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}", where


def _type_tag(part: object) -> bool:
    """pydantic's name of a union member in an error's path: no field of ours has brackets, dashes or these names."""
    return isinstance(part, str) and ("[" in part or "-" in part or part in ("str", "int", "float", "bool"))


def _of_the_sent_type(loc: tuple[int | str, ...], body: dict[str, Any]) -> bool:
    parts = [p for p in loc if p != "body"]
    tags = [p for p in parts if _type_tag(p)]
    if not parts or not tags:
        return True
    sent_list = isinstance(body.get(str(parts[0])), list)
    return str(tags[0]).startswith("list[") == sent_list


def prometheus_text(state: ServerState) -> str:
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
    lines += state.latency.prometheus()
    return "\n".join(lines) + "\n"
