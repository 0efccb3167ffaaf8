"""What the completions and chat responses share: usage and the exit summary of a request's choices, the error a
failed or timed-out request answers, and the server-sent-event stream around their own chunks."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request

from moeops.serving.decoding.codec import Codec
from moeops.serving.decoding.early_exit import ExitPolicy
from moeops.serving.decoding.engine import Handle
from moeops.serving.openai.api_models import ExitSummary, Usage
from moeops.serving.openai.errors import error_event, error_response
from moeops.serving.openai.generation import ChoiceRun, DeadlineExceeded, Progress, RunContext, cancel_all, collect, run
from moeops.serving.openai.plans import Plan

Chunk = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(runs: Iterable[ChoiceRun], p: Plan) -> Usage:
    """Prompt tokens once per prompt (whatever n is, as vLLM and OpenAI count them), completion tokens of all."""
    prompt = sum(len(ids) for ids in p.prompts)
    completion = sum(len(r.tokens) for r in runs)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def exits(runs: Iterable[ChoiceRun], layers: int, policy: ExitPolicy) -> ExitSummary:
    tokens = [t for r in runs for t in r.tokens]
    return ExitSummary(
        mean_exit_layer=sum(t.exit_layer for t in tokens) / len(tokens) if tokens else None,
        layers=layers,
        early_exits=sum(t.exit_layer < layers for t in tokens),
        policy={"enabled": policy.enabled, "rule": policy.rule, "threshold": policy.threshold,
                "min_layer": policy.min_layer},
    )  # fmt: skip


async def collected(
    request: Request, handles: list[Handle], p: Plan, codec: Codec, ctx: RunContext
) -> list[ChoiceRun] | JSONResponse:
    """Every choice to its end, or the error to answer instead (503: generation failed; 504: the deadline)."""
    try:
        runs = await collect(request, handles, p, codec, ctx)
    except DeadlineExceeded as exc:
        return error_response(504, str(exc), code="timeout")
    failed = next((r.error for r in runs if r.error), None)
    return error_response(503, failed) if failed else runs


def sse(
    handles: list[Handle],
    p: Plan,
    codec: Codec,
    ctx: RunContext,
    *,
    head: Iterable[Chunk],
    chunk: Callable[[Progress], Chunk | None],
    tail: Callable[[list[ChoiceRun]], Iterable[Chunk]],
) -> StreamingResponse:
    """`data: {chunk}` events: `head` first, then `chunk` of each progress (None: nothing to send), then `tail` of
    the finished choices and `data: [DONE]`. A failure or the deadline ends it with an error event, then [DONE]."""

    async def events() -> AsyncIterator[str]:
        runs: dict[int, ChoiceRun] = {}
        try:
            for body in head:
                yield _data(body)
            async for progress in run(handles, p, codec, ctx):
                runs[progress.choice.index] = progress.choice
                if progress.choice.error:
                    yield error_event(progress.choice.error)
                    break
                piece = chunk(progress)
                if piece is not None:
                    yield _data(piece)
            else:
                for body in tail([runs[i] for i in sorted(runs)]):
                    yield _data(body)
        except DeadlineExceeded as exc:
            yield error_event(str(exc))
        finally:  # the client gone mid-stream closes this generator: its choices must not go on
            cancel_all(handles)
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _data(body: Chunk) -> str:
    return f"data: {json.dumps(body)}\n\n"


def usage_chunks(base: Chunk, runs: list[ChoiceRun], p: Plan, layers: int) -> list[Chunk]:
    """stream_options.include_usage: one last chunk with no choices and the whole request's usage."""
    if not p.include_usage:
        return []
    return [{**base, "choices": [], "usage": usage(runs, p).model_dump(),
             "moeops": exits(runs, layers, p.policy).model_dump()}]  # fmt: skip
