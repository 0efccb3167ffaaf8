"""A request's choices through the engine: submitted together, their events merged as they come, each choice's
text assembled (stop strings cut), and every choice cancelled as soon as it is no longer wanted: a stop string, the
request's deadline, or the client gone (streaming or not: an abandoned request must not keep a place in the batch).

Both the completions and the chat responses (completions.py, chat.py) read `run`'s progress and only format it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace

from starlette.requests import Request

from moeops.serving.decoding.assembler import TextAssembler
from moeops.serving.decoding.codec import Codec
from moeops.serving.decoding.decode import DecodedToken
from moeops.serving.decoding.engine import Engine, EngineUnavailable, Event, Failed, Finished, Handle, QueueFull
from moeops.serving.latency import LatencyRecorder
from moeops.serving.openai.errors import ClientError
from moeops.serving.openai.plans import Plan


@dataclass(frozen=True)
class RunContext:
    """How the server runs a request: its deadline, and where its latency is recorded (and under what names)."""

    timeout_s: float | None = None
    latency: LatencyRecorder | None = None
    operation: str = "text_completion"
    """gen_ai.operation.name: "text_completion" or "chat"."""
    model: str = ""


def submit(engine: Engine | None, codec: Codec, p: Plan) -> list[Handle]:
    """Every choice of the plan queued, or none (ClientError 503 when not running, 429 when the queue is full)."""
    if engine is None:
        raise ClientError(503, "the model is not loaded yet: retry when /readyz answers 200")
    handles: list[Handle] = []
    try:
        for request in p.requests(codec.eos):
            handles.append(engine.submit(request))
    except QueueFull as exc:
        cancel_all(handles)
        headers = {"Retry-After": str(exc.retry_after_s)}
        raise ClientError(429, str(exc), code="queue_full", headers=headers) from exc
    except EngineUnavailable as exc:
        cancel_all(handles)
        raise ClientError(503, str(exc)) from exc
    return handles


def cancel_all(handles: list[Handle]) -> None:
    for handle in handles:
        handle.cancel()


@dataclass
class ChoiceRun:
    """One choice as it is generated."""

    index: int
    text: TextAssembler
    tokens: list[DecodedToken] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(frozen=True)
class Progress:
    """What one event changed: the choice, the text that may be shown now, and the tokens it came with."""

    choice: ChoiceRun
    delta: str
    tokens: list[DecodedToken]
    last: bool = False
    """Every choice is done after this one."""


class DeadlineExceeded(Exception):
    """The request ran longer than the server's request timeout (its choices are cancelled)."""


async def _merged(handles: list[Handle]) -> AsyncGenerator[tuple[int, Event]]:
    if len(handles) == 1:  # most requests: no task, no second queue
        async for event in handles[0].events():
            yield 0, event
        return
    merged: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(index: int, handle: Handle) -> None:
        async for event in handle.events():
            merged.put_nowait((index, event))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            index, event = await merged.get()
            yield index, event
            left -= not isinstance(event, DecodedToken)
    finally:
        for task in tasks:
            task.cancel()


async def run(handles: list[Handle], p: Plan, codec: Codec, ctx: RunContext) -> AsyncIterator[Progress]:
    """Each event's progress, until every choice is done; DeadlineExceeded after the context's timeout. Every
    handle is cancelled on the way out, whatever ends it (the caller stopped reading included)."""
    runs = [ChoiceRun(i, TextAssembler(codec, p.stops)) for i in range(len(handles))]
    timing = _Timing(handles, ctx)
    left = len(runs)
    events = _merged(handles)
    timeout_s = ctx.timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            async for index, event in events:
                choice = runs[index]
                if choice.done:  # a stop string ended it: its last events are of no use
                    continue
                progress = _apply(choice, event)
                timing.saw(progress)
                if choice.done:
                    handles[index].cancel()
                    left -= 1
                yield progress if left else replace(progress, last=True)
                if not left:
                    break
    except TimeoutError as exc:
        raise DeadlineExceeded(f"the request took longer than the server's limit of {timeout_s:g} s") from exc
    finally:
        cancel_all(handles)
        await events.aclose()


class _Timing:
    """Each choice's time to first token, time per output token and duration, into the context's recorder."""

    def __init__(self, handles: list[Handle], ctx: RunContext) -> None:
        self.handles, self.ctx = handles, ctx
        self.firsts: dict[int, float] = {}

    def saw(self, progress: Progress) -> None:
        latency, ctx, index = self.ctx.latency, self.ctx, progress.choice.index
        if latency is None:
            return
        arrived = self.handles[index].arrived
        if progress.tokens and index not in self.firsts:
            self.firsts[index] = now = time.monotonic()
            latency.first_token(arrived, ctx.operation, ctx.model, now)
        if progress.choice.done:
            tokens = len(progress.choice.tokens)
            latency.finished(arrived, self.firsts.get(index), tokens, ctx.operation, ctx.model)


def _apply(choice: ChoiceRun, event: Event) -> Progress:
    if isinstance(event, Failed):
        choice.error = f"generation failed: {event.message}"
        return Progress(choice, "", [])
    if isinstance(event, Finished):
        choice.finish_reason = event.reason
        return Progress(choice, choice.text.rest(), [])
    choice.tokens.append(event)
    delta = choice.text.add(event.token)
    if choice.text.stopped:
        choice.finish_reason = "stop"
        delta += choice.text.rest()
    return Progress(choice, delta, [event])


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(request: Request, handles: list[Handle]) -> AsyncIterator[None]:
    """While the body runs, a watcher that cancels every handle when the client goes away (a non-streaming
    response has nobody else listening to the connection)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                cancel_all(handles)
                return

    watcher = asyncio.create_task(watch(), name="watch-disconnect")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def collect(request: Request, handles: list[Handle], p: Plan, codec: Codec, ctx: RunContext) -> list[ChoiceRun]:
    """Every choice to its end (for a JSON answer), cancelled if the client leaves; DeadlineExceeded after the
    context's timeout."""
    runs: dict[int, ChoiceRun] = {}
    async with cancelled_on_disconnect(request, handles):
        async for progress in run(handles, p, codec, ctx):
            runs[progress.choice.index] = progress.choice
    return [runs[i] for i in sorted(runs)]
