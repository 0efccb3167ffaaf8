"""/v1/chat/completions' answers: one `chat.completion` JSON body, or server-sent `chat.completion.chunk` events
(the assistant's role first, then content deltas, then finish_reason; usage last with include_usage)."""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from moeops.serving.decoding.codec import Codec
from moeops.serving.decoding.decode import DecodedToken
from moeops.serving.decoding.engine import Handle
from moeops.serving.loader import ServedModel
from moeops.serving.openai.chat_models import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChoiceLogprobs,
    TokenLogprob,
    TopLogprob,
)
from moeops.serving.openai.generation import Progress, RunContext
from moeops.serving.openai.plans import Plan
from moeops.serving.openai.responding import Chunk, collected, exits, new_id, sse, usage, usage_chunks


def _top(codec: Codec, token: int, logprob: float) -> TopLogprob:
    text = codec.decode([token])
    return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))


def logprobs_of(tokens: list[DecodedToken], codec: Codec) -> ChoiceLogprobs:
    content = [
        TokenLogprob(
            **_top(codec, t.token, t.logprob if t.logprob is not None else float("nan")).model_dump(),
            top_logprobs=[_top(codec, i, lp) for i, lp in t.top_logprobs],
        )
        for t in tokens
    ]
    return ChoiceLogprobs(content=content)


async def complete(request: Request, handles: list[Handle], p: Plan, served: ServedModel, ctx: RunContext
                   ) -> Response:  # fmt: skip
    runs = await collected(request, handles, p, served.codec, ctx)
    if isinstance(runs, JSONResponse):
        return runs
    wants_logprobs = p.sampling.logprobs is not None
    choices = [
        ChatChoice(
            index=r.index,
            message=AssistantMessage(content=r.text.text),
            logprobs=logprobs_of(r.tokens, served.codec) if wants_logprobs else None,
            finish_reason=r.finish_reason,
        )
        for r in runs
    ]
    body = ChatCompletion(
        id=new_id("chatcmpl"), created=int(time.time()), model=served.name, choices=choices, usage=usage(runs, p),
        moeops=exits(runs, served.arch.layers, p.policy),
    )  # fmt: skip
    return JSONResponse(body.model_dump())


def stream(handles: list[Handle], p: Plan, served: ServedModel, ctx: RunContext) -> Response:
    cid, created, codec = new_id("chatcmpl"), int(time.time()), served.codec

    def body(choices: list[dict[str, Any]]) -> Chunk:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                "choices": choices}  # fmt: skip

    def choice(index: int, delta: dict[str, Any], logprobs: Any = None, reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}

    def chunk(progress: Progress) -> Chunk | None:
        run, reason = progress.choice, progress.choice.finish_reason
        logprobs = None
        if p.sampling.logprobs is not None and progress.tokens:
            logprobs = logprobs_of(progress.tokens, codec).model_dump()
        if not (progress.delta or reason or logprobs):
            return None
        delta = {"content": progress.delta} if progress.delta or logprobs else {}
        return body([choice(run.index, delta, logprobs, reason)])

    head = [body([choice(i, {"role": "assistant", "content": ""})]) for i in range(p.choices)]
    layers = served.arch.layers
    return sse(
        handles, p, codec, ctx, head=head, chunk=chunk, tail=lambda runs: usage_chunks(body([]), runs, p, layers)
    )
