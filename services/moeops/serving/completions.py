"""From a validated /v1/completions request to the engine and back: prompt checks (the client's faults, as 4xx
with a message), stop strings, and the JSON or server-sent-event response."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from .api_models import Choice, Completion, CompletionRequest, ErrorBody, ErrorDetail, ExitSummary, Usage
from .codec import Codec
from .decode import DecodedToken
from .early_exit import ExitPolicy
from .engine import Engine, EngineUnavailable, Failed, Finished, GenerationRequest, Handle
from .loader import ServedModel

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ClientError(Exception):
    """A request this server will not serve, and why (an OpenAI-shaped error with this status)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


@dataclass(frozen=True)
class Plan:
    """What the engine will run for a request."""

    prompt: list[int]
    max_tokens: int
    policy: ExitPolicy
    stops: list[str]


def plan(body: CompletionRequest, served: ServedModel, policy: ExitPolicy) -> Plan:
    """The request checked against the model; ClientError says what is wrong."""
    if body.model != served.name:
        raise ClientError(
            404,
            f"The model {body.model!r} does not exist: this server serves {served.name!r}",
            "model",
            "model_not_found",
        )
    if body.temperature not in (None, 0.0):
        raise ClientError(400, "only greedy decoding is served: temperature must be 0 (or left out)", "temperature")
    if body.top_p not in (None, 1.0):
        raise ClientError(400, "only greedy decoding is served: top_p must be 1 (or left out)", "top_p")
    if body.echo:
        raise ClientError(400, "echo is not supported", "echo")
    ids = _prompt_ids(body.prompt, served)
    context = served.context
    if len(ids) > context:
        raise ClientError(
            400, f"the prompt is {len(ids)} tokens, more than the model's context of {context} tokens", "prompt",
            "context_length_exceeded",
        )  # fmt: skip
    max_tokens = body.max_tokens or min(DEFAULT_MAX_TOKENS, context - len(ids) + 1)
    if len(ids) + max_tokens - 1 > context:
        raise ClientError(
            400,
            f"This model's maximum context length is {context} tokens: the prompt ({len(ids)} tokens) and"
            f" max_tokens ({max_tokens}) need {len(ids) + max_tokens - 1}. Lower max_tokens to at most"
            f" {context - len(ids) + 1}.",
            "max_tokens",
            "context_length_exceeded",
        )
    return Plan(ids, max_tokens, _policy(body, policy), body.stop_strings())


def _prompt_ids(prompt: str | list[int], served: ServedModel) -> list[int]:
    if isinstance(prompt, str):
        try:
            ids = served.codec.encode_prompt(prompt)
        except ValueError as exc:
            raise ClientError(400, f"the prompt cannot be encoded by the model's tokenizer: {exc}", "prompt") from exc
    else:
        vocab = served.arch.vocab_size
        bad = next((i for i in prompt if i >= vocab), None)
        if bad is not None:
            raise ClientError(400, f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})", "prompt")
        ids = list(prompt)
    if not ids:
        raise ClientError(400, "the prompt is empty: give at least one token", "prompt")
    return ids


def _policy(body: CompletionRequest, policy: ExitPolicy) -> ExitPolicy:
    override = body.early_exit
    if override is None:
        return policy
    try:
        out = policy.override(threshold=override.threshold, rule=override.rule, min_layer=override.min_layer)
        return out if override.enabled is None else replace(out, enabled=override.enabled)
    except ValueError as exc:  # the schema bounds them already; kept for a policy rule added later
        raise ClientError(400, f"early_exit: {exc}", "early_exit") from exc


def submit(engine: Engine | None, codec: Codec, p: Plan) -> Handle:
    if engine is None:
        raise ClientError(503, "the model is not loaded yet: retry when /readyz answers 200")
    try:
        return engine.submit(GenerationRequest(p.prompt, p.max_tokens, p.policy, codec.eos))
    except EngineUnavailable as exc:
        raise ClientError(503, str(exc)) from exc


@dataclass
class TextAssembler:
    """Completion text as tokens arrive: incremental deltas for streaming that never show a stop string (text that
    could still become one is held back), and the final text cut before the first stop string."""

    codec: Codec
    stops: list[str]
    ids: list[int] = field(default_factory=list)
    emitted: int = 0
    text: str = ""
    stopped: bool = False

    def add(self, token: int) -> str:
        """The new text that may be shown now; sets `stopped` when a stop string appeared."""
        if token != self.codec.eos:
            self.ids.append(token)
        full = self.codec.decode(self.ids)
        if full.endswith("\ufffd"):  # a character cut between byte-level tokens: wait for the rest
            return ""
        self.text = full
        hits = [i for i in (full.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.text = True, full[: min(hits)]
            return self._emit(len(self.text))
        hold = max((k for s in self.stops for k in range(1, len(s)) if full.endswith(s[:k])), default=0)
        return self._emit(len(full) - hold)

    def rest(self) -> str:
        """What is left to show once generation has ended."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return delta


@dataclass
class Outcome:
    tokens: list[DecodedToken] = field(default_factory=list)
    finish_reason: str | None = None

    def usage(self, prompt_tokens: int) -> Usage:
        n = len(self.tokens)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=n, total_tokens=prompt_tokens + n)

    def exits(self, layers: int, policy: ExitPolicy) -> ExitSummary:
        n = len(self.tokens)
        return ExitSummary(
            mean_exit_layer=sum(t.exit_layer for t in self.tokens) / n if n else None,
            layers=layers,
            early_exits=sum(t.exit_layer < layers for t in self.tokens),
            policy={"enabled": policy.enabled, "rule": policy.rule, "threshold": policy.threshold,
                    "min_layer": policy.min_layer},
        )  # fmt: skip


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


async def complete(handle: Handle, p: Plan, served: ServedModel) -> Response:
    """Wait for the whole completion and answer it as one JSON body."""
    text, outcome = TextAssembler(served.codec, p.stops), Outcome()
    try:
        async for event in handle.events():
            if isinstance(event, Failed):
                return error_response(503, f"generation failed: {event.message}")
            if isinstance(event, Finished):
                outcome.finish_reason = event.reason
                break
            outcome.tokens.append(event)
            text.add(event.token)
            if text.stopped:
                outcome.finish_reason = "stop"
                break
    finally:
        handle.cancel()
    body = Completion(
        id=_completion_id(),
        created=int(time.time()),
        model=served.name,
        choices=[Choice(text=text.text, finish_reason=outcome.finish_reason)],
        usage=outcome.usage(len(p.prompt)),
        moeops=outcome.exits(served.arch.layers, p.policy),
    )
    return JSONResponse(body.model_dump())


def stream(handle: Handle, p: Plan, served: ServedModel) -> StreamingResponse:
    """Server-sent events: `data: {completion chunk}` per piece of text, the last one with finish_reason, usage and
    the exit summary, then `data: [DONE]`."""
    cid, created = _completion_id(), int(time.time())

    def chunk(delta: str, reason: str | None = None, outcome: Outcome | None = None) -> str:
        # A plain dict with Completion's fields (one per token: no model validation on the hot path).
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
        body: dict[str, object] = {"id": cid, "object": "text_completion", "created": created, "model": served.name,
                                   "choices": [choice]}  # fmt: skip
        if outcome is not None:
            body["usage"] = outcome.usage(len(p.prompt)).model_dump()
            body["moeops"] = outcome.exits(served.arch.layers, p.policy).model_dump()
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        text, outcome = TextAssembler(served.codec, p.stops), Outcome()
        try:
            async for event in handle.events():
                if isinstance(event, Failed):
                    error = ErrorBody(
                        error=ErrorDetail(message=f"generation failed: {event.message}", type="server_error")
                    )
                    yield f"data: {error.model_dump_json()}\n\n"
                    break
                if isinstance(event, Finished):
                    outcome.finish_reason = event.reason
                    break
                outcome.tokens.append(event)
                delta = text.add(event.token)
                if text.stopped:
                    outcome.finish_reason = "stop"
                    break
                if delta:
                    yield chunk(delta)
            if outcome.finish_reason is not None:
                yield chunk(text.rest(), outcome.finish_reason, outcome)
            yield "data: [DONE]\n\n"
        finally:
            handle.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
