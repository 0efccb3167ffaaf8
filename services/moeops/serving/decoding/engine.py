"""The model worker: one thread that owns the model, a dynamic batcher in front of it, and the server's load counters.

Generation runs off the event loop on a dedicated thread (torch releases the GIL inside its kernels, so the loop
keeps answering HTTP while a step runs); tokens flow back to each request's asyncio queue through
`loop.call_soon_threadsafe` as they are made, which is what streaming sends.

Batching is iteration-level scheduling (continuous batching, as in Orca and vLLM's scheduler): when the worker is
idle it takes the first request, then up to `max_batch_size` that arrive within `max_latency_ms` of that first one,
and serves them together; while sequences are running, new requests join at the next round (a round advances every
running sequence by one token) up to `max_batch_size` at once, and a finished one leaves at once. So no request
waits for another to finish (no head-of-line blocking), and a new request's first token comes after one round.

Within a round, the sequences that run every layer (early exit off for them) share one pass: their projections,
experts and head run as one (B, D) batch, attention per row over each sequence's own KV cache (batched.py; the
cache keeps one length for its rows, and the sequences of a round have different lengths). A sequence that may exit
early runs `decode.decode_step` alone, since it leaves at its own layer: for those the batching is of scheduling,
not of matrix products. Prompts are prefilled one by one as they join.

The decoder gives each sequence its argmax and the logits it came from; a request that samples (or wants
log-probabilities, a logit bias or penalties) has its own `sampling.Sampler` choose from those logits, on this
thread. A request that is cancelled (a stop string, its deadline, its client gone) is dropped at the next round
and told so with Failed("cancelled"), which ends whatever still waits on it; a full queue is QueueFull (429).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import torch

from moeops.model import Transformer
from moeops.model.kv_cache import KVCache
from moeops.serving.decoding.batched import decode_rows
from moeops.serving.decoding.decode import DecodedToken, decode_step
from moeops.serving.decoding.early_exit import ExitPolicy
from moeops.serving.decoding.sampling import GREEDY, Sampler, SamplingParams

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
"""Tokens/s and requests/s are averaged over this many seconds (what the autoscaler sees)."""


@dataclass(frozen=True)
class Finished:
    reason: str
    """"stop" (the end-of-sequence token) or "length" (max_tokens)."""


@dataclass(frozen=True)
class Failed:
    message: str


Event = DecodedToken | Finished | Failed


class EngineUnavailable(RuntimeError):
    """The engine is not running: the request cannot be taken now (503)."""


class QueueFull(EngineUnavailable):
    """As many requests are waiting as the engine takes (429): try again in `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class GenerationRequest:
    prompt: list[int]
    max_tokens: int
    policy: ExitPolicy
    eos: int | None
    sampling: SamplingParams = GREEDY


class Handle:
    """One request's side of the engine: its events, in order, and a way to stop it early (a stop string was
    seen, or the client went away)."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.arrived = time.monotonic()
        self.cancelled = False
        self.loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def cancel(self) -> None:
        self.cancelled = True  # read by the worker at its next round (a plain bool: one writer, one reader)

    def push(self, event: Event) -> None:
        """From the worker thread."""
        deliver({self.loop: [(self, event)]})

    async def events(self) -> AsyncIterator[Event]:
        """Tokens, then one Finished or Failed."""
        while True:
            event = await self._events.get()
            yield event
            if not isinstance(event, DecodedToken):
                return


def deliver(events: dict[asyncio.AbstractEventLoop, list[tuple[Handle, Event]]]) -> None:
    """Hand events to their handles from the worker thread: one wake-up of each loop per round, not per token."""
    for loop, items in events.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            for handle, _ in items:
                handle.cancelled = True


def _put_all(items: list[tuple[Handle, Event]]) -> None:
    for handle, event in items:
        handle._events.put_nowait(event)


@dataclass
class _Sequence:
    handle: Handle
    cache: KVCache
    token: int
    sampler: Sampler | None
    """None: the decoder's argmax is the token (greedy, no log-probabilities)."""
    generated: int = 0

    def choose(self, out: DecodedToken) -> DecodedToken:
        """The token this sequence takes from the decoder's output, without the logits (they stay here)."""
        if self.sampler is None or out.logits is None:
            return replace(out, logits=None)
        c = self.sampler.choose(out.logits, out.token)
        return replace(out, token=c.token, logprob=c.logprob, top_logprobs=c.top_logprobs, logits=None)


@dataclass(frozen=True)
class EngineStats:
    in_flight: int
    """Sequences being generated now."""
    queued: int
    """Requests waiting for a place in the batch."""
    tokens_per_second: float
    requests_per_second: float
    mean_exit_layer: float | None
    """Over every token generated so far (None before the first)."""
    tokens_generated: int
    requests_completed: int
    rounds: int
    batched_rounds: int
    """Rounds that advanced more than one sequence."""
    max_round_size: int


@dataclass
class _Counters:
    tokens: int = 0
    exit_layer_sum: int = 0
    completed: int = 0
    rounds: int = 0
    batched_rounds: int = 0
    max_round_size: int = 0
    window: collections.deque[tuple[float, int, int]] = field(default_factory=collections.deque)


_STOP = object()
CANCELLED = "cancelled"
"""The Failed message of a request cancelled before it finished (a stop string, a deadline, a client gone)."""


class Engine:
    """Owns `model` on one worker thread; `submit` from the event loop, `stats` from anywhere."""

    def __init__(
        self,
        model: Transformer,
        *,
        max_batch_size: int,
        max_latency_ms: float,
        max_queued: int = 4096,
        batched_matmuls: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_latency_ms < 0:
            raise ValueError("max_batch_size must be at least 1 and max_latency_ms not negative")
        self.model = model.eval()
        self.max_batch_size, self.max_latency_s, self.max_queued = max_batch_size, max_latency_ms / 1000, max_queued
        self._clock = clock
        self.batched_matmuls = batched_matmuls
        """Full-depth sequences of a round share one pass (batched.py); False: each its own decode_step."""
        self._pending: queue.Queue[Handle | object] = queue.Queue()
        self._active: list[_Sequence] = []
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.error: str | None = None
        """Why the worker died (it should not): the server is then not ready."""

    # -- the event loop's side -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._thread = threading.Thread(target=self._run, name="moeops-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Fail what is queued or running, and end the worker thread (blocking: call it from a thread)."""
        self._stopping = True
        self._pending.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, request: GenerationRequest) -> Handle:
        """Queue a request (on the running loop); EngineUnavailable when stopped or full."""
        if not self.running:
            raise EngineUnavailable(self.error or "the model worker is not running")
        if self._pending.qsize() >= self.max_queued:
            raise QueueFull(f"{self.max_queued} requests are already queued: retry later", self.retry_after_s())
        handle = Handle(request, asyncio.get_running_loop())
        self._pending.put(handle)
        return handle

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained at the recent completion rate (1 to 60)."""
        rate = self.stats().requests_per_second
        waiting = self._pending.qsize() + len(self._active)
        return 1 if rate <= 0 else max(1, min(60, math.ceil(waiting / rate)))

    def stats(self) -> EngineStats:
        now = self._clock()
        with self._lock:
            c = self._counters
            while c.window and c.window[0][0] < now - RATE_WINDOW_S:
                c.window.popleft()
            tokens = sum(t for _, t, _ in c.window)
            done = sum(d for _, _, d in c.window)
            mean = c.exit_layer_sum / c.tokens if c.tokens else None
            counts = (c.tokens, c.completed, c.rounds, c.batched_rounds, c.max_round_size)
        return EngineStats(
            len(self._active),
            self._pending.qsize(),
            tokens / RATE_WINDOW_S,
            done / RATE_WINDOW_S,
            mean,
            *counts,
        )

    # -- the worker thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while not self._stopping:
                    self._admit()
                    if self._active:
                        self._round()
        except Exception as exc:  # a bug: say so, and stop being ready
            logger.exception("the model worker died")
            self.error = f"the model worker died: {type(exc).__name__}: {exc}"
            self._stopping = True
        finally:
            self._drain("the server is shutting down" if self.error is None else self.error)

    def _drain(self, why: str) -> None:
        for seq in self._active:
            seq.handle.push(Failed(why))
        self._active.clear()
        while True:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Handle):
                item.push(Failed(why))

    def _admit(self) -> None:
        """Idle: wait for a request, then for more until `max_latency_ms` after it arrived or the batch is full.
        Busy: take what is already waiting, up to the batch size."""
        if not self._active:
            first = self._pending.get()
            if not isinstance(first, Handle):
                return  # stopping
            self._start(first)
            deadline = first.arrived + self.max_latency_s
            while len(self._active) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                try:
                    item = self._pending.get(timeout=left)
                except queue.Empty:
                    break
                if not isinstance(item, Handle):
                    return
                self._start(item)
        while len(self._active) < self.max_batch_size:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, Handle):
                return
            self._start(item)

    def _start(self, handle: Handle) -> None:
        """Prefill the prompt (all but its last token, which is the first decoding step's input)."""
        if handle.cancelled:
            handle.push(Failed(CANCELLED))
            return
        request = handle.request
        try:
            cache = self.model.new_kv_cache(batch=1, capacity=len(request.prompt) + request.max_tokens - 1)
            if len(request.prompt) > 1:
                device = self.model.embedding.weight.device
                self.model.forward_cached(torch.tensor([request.prompt[:-1]], device=device), cache)
        except (ValueError, RuntimeError, IndexError) as exc:  # checked by the app before: a bug if it happens
            logger.exception("prefill failed")
            handle.push(Failed(f"prefill failed: {exc}"))
            return
        sampler = Sampler(request.sampling) if request.sampling.needs_logits else None
        self._active.append(_Sequence(handle, cache, request.prompt[-1], sampler))

    def _step(self, live: list[_Sequence]) -> list[DecodedToken]:
        """The next token of every sequence: the full-depth ones in one batched pass (batched.decode_rows), the
        ones that may exit early one by one (decode.decode_step follows each to its own exit layer)."""
        batch = [s for s in live if s.handle.request.policy.never_exits] if self.batched_matmuls else []
        out: dict[int, DecodedToken] = {}
        if len(batch) > 1:
            tokens = decode_rows(self.model, [s.token for s in batch], [s.cache for s in batch])
            out = {id(s): t for s, t in zip(batch, tokens, strict=True)}
        for seq in live:
            if id(seq) not in out:
                out[id(seq)] = decode_step(self.model, seq.token, seq.cache, seq.handle.request.policy)
        return [out[id(seq)] for seq in live]

    def _round(self) -> None:
        """Every running sequence one token further."""
        size = len(self._active)
        tokens = exit_sum = done = 0
        still: list[_Sequence] = []
        live = [seq for seq in self._active if not seq.handle.cancelled]
        done += size - len(live)
        events: dict[asyncio.AbstractEventLoop, list[tuple[Handle, Event]]] = {}
        for seq in self._active:  # whoever still waits on a cancelled one (a gone client's handler) may end
            if seq.handle.cancelled:
                events.setdefault(seq.handle.loop, []).append((seq.handle, Failed(CANCELLED)))
        for seq, decoded in zip(live, self._step(live), strict=True):
            handle, request = seq.handle, seq.handle.request
            mine = events.setdefault(handle.loop, [])
            try:
                out = seq.choose(decoded)
            except (ValueError, RuntimeError) as exc:  # this request's sampling, not the worker: fail it alone
                logger.exception("sampling failed")
                mine.append((handle, Failed(f"sampling failed: {exc}")))
                done += 1
                continue
            seq.generated += 1
            tokens, exit_sum = tokens + 1, exit_sum + out.exit_layer
            mine.append((handle, out))
            if out.token == request.eos or seq.generated >= request.max_tokens:
                mine.append((handle, Finished("stop" if out.token == request.eos else "length")))
                done += 1
            else:
                seq.token = out.token
                still.append(seq)
        self._active = still
        deliver(events)
        with self._lock:
            c = self._counters
            c.tokens, c.exit_layer_sum, c.completed = c.tokens + tokens, c.exit_layer_sum + exit_sum, c.completed + done
            c.rounds += 1
            c.batched_rounds += size > 1
            c.max_round_size = max(c.max_round_size, size)
            c.window.append((self._clock(), tokens, done))
