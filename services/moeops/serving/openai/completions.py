"""/v1/completions' answers: one JSON body, or server-sent events of `text_completion` chunks, from the request's
choices as generation.py runs them (n per prompt, echo, log-probabilities, usage)."""

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
from moeops.serving.openai.api_models import Choice, Completion, CompletionLogprobs
from moeops.serving.openai.generation import Progress, RunContext
from moeops.serving.openai.plans import Plan
from moeops.serving.openai.responding import Chunk, collected, exits, new_id, sse, usage, usage_chunks


def logprobs_of(tokens: list[DecodedToken], codec: Codec, offset: int) -> CompletionLogprobs:
    """OpenAI's completion log-probabilities of `tokens`, the first at `offset` in the choice's text."""
    texts = [codec.decode([t.token]) for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return CompletionLogprobs(
        tokens=texts,
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{codec.decode([i]): lp for i, lp in t.top_logprobs} for t in tokens],
        text_offset=offsets,
    )


async def complete(request: Request, handles: list[Handle], p: Plan, served: ServedModel, ctx: RunContext
                   ) -> Response:  # fmt: skip
    """Wait for every choice and answer them as one JSON body."""
    runs = await collected(request, handles, p, served.codec, ctx)
    if isinstance(runs, JSONResponse):
        return runs
    echoes = [_echo(p, served.codec, r.index) for r in runs]
    choices = [
        Choice(
            index=r.index,
            text=echo + r.text.text,
            logprobs=logprobs_of(r.tokens, served.codec, len(echo)) if p.sampling.logprobs is not None else None,
            finish_reason=r.finish_reason,
        )
        for r, echo in zip(runs, echoes, strict=True)
    ]
    body = Completion(
        id=new_id("cmpl"), created=int(time.time()), model=served.name, choices=choices, usage=usage(runs, p),
        moeops=exits(runs, served.arch.layers, p.policy),
    )  # fmt: skip
    return JSONResponse(body.model_dump())


def _echo(p: Plan, codec: Codec, index: int) -> str:
    return codec.decode(p.prompt_of(index)) if p.echo else ""


def stream(handles: list[Handle], p: Plan, served: ServedModel, ctx: RunContext) -> Response:
    """Server-sent events: a chunk per piece of text (per token with logprobs), the one that ends the last choice
    with finish_reason, usage and the exit summary; with stream_options.include_usage a last chunk with no
    choices and the usage; then `data: [DONE]`."""
    cid, created, codec = new_id("cmpl"), int(time.time()), served.codec
    offsets = {i: len(_echo(p, codec, i)) for i in range(p.choices)}

    def body(choices: list[dict[str, Any]]) -> Chunk:
        return {"id": cid, "object": "text_completion", "created": created, "model": served.name, "choices": choices}

    def choice(index: int, text: str, logprobs: Any = None, reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def chunk(progress: Progress) -> Chunk | None:
        run, reason = progress.choice, progress.choice.finish_reason
        logprobs = None
        if p.sampling.logprobs is not None and progress.tokens:
            logprobs = logprobs_of(progress.tokens, codec, offsets[run.index]).model_dump()
            offsets[run.index] += sum(len(t) for t in logprobs["tokens"])
        if not (progress.delta or reason or logprobs):
            return None
        out = body([choice(run.index, progress.delta, logprobs, reason)])
        if progress.last and p.choices == 1:  # moeops' own: the one choice's last chunk has its totals
            out["usage"] = usage([run], p).model_dump()
            out["moeops"] = exits([run], served.arch.layers, p.policy).model_dump()
        return out

    head = [body([choice(i, _echo(p, codec, i))]) for i in range(p.choices)] if p.echo else []
    layers = served.arch.layers
    return sse(
        handles, p, codec, ctx, head=head, chunk=chunk, tail=lambda runs: usage_chunks(body([]), runs, p, layers)
    )
