"""Step metrics from a training process to NATS without ever holding up the training step.

`NatsMetricsSink.publish()` only appends the record to a bounded buffer (the oldest record is dropped, and
counted, when it is full: a load balancer wants the freshest measurements) and wakes a background thread. That
thread runs its own asyncio loop: it connects (retrying until a server answers), turns records into
`WorkerMetrics` (validation and JSON stay off the training thread), and publishes them.

Delivery: a JetStream publish that waits for the stream's ack, of the compact metrics record (`metrics_wire`).
No `Nats-Msg-Id` header: a retry after a lost ack may store a step twice, and the rebalancer keys measurements by
(rank, step) and drops the second as a duplicate. The header would make the stream drop it instead, but nats-py
parses every delivered message's headers in Python, about 7 µs a message at the rebalancer, a third of its budget
(benchmarks/bus_ingest.py `--no-msg-id`, docs/benchmarks.md). Every plain subscriber of the subject hears a
JetStream publish too; it may hear a retried step twice as well.
When no stream stores the subject (JetStream off, or the stream not created yet: looked up again every 30 s) the
record goes out as a plain publish: live subscribers still get it, and `unstored` counts it. While the connection
is down the record waits (nats-py reconnects in the background) and the buffer absorbs new ones, up to its
capacity; a record that fails MAX_ATTEMPTS times over a live connection is dropped in favour of fresher ones.

`close()` delivers what is buffered for up to `close_timeout_s`, then drops (and counts) the rest and returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from pydantic import ValidationError

from .connection import ConnectionOptions, backoff_delay, connect
from .loop_thread import BackgroundLoop, cancel_until_done
from .messages import WorkerMetrics, encode_metrics
from .records import StepRecord
from .subjects import token

logger = logging.getLogger(__name__)

DISCONNECTED_POLL_S = 0.05
"""How often a waiting record checks whether nats-py has reconnected."""
RETRY_BASE_S, RETRY_MAX_S = 0.05, 1.0
MAX_ATTEMPTS = 5
"""Failed publishes of one record over a live connection before it is dropped: fresher records are waiting."""
CLOSE_CONNECTION_TIMEOUT_S = 1.0
STREAM_RECHECK_S = 30.0
"""While no stream stores the metrics, how often to look again (someone may create it)."""


class _Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"
    DROPPED = "dropped"


@dataclass(frozen=True)
class SinkCounters:
    sent: int
    """Records acknowledged by the stream, or handed to the client when no stream captures them."""
    dropped: int
    """Records lost: buffer overflow, invalid records, rejected publishes, and what close() could not deliver."""
    unstored: int
    """Of `sent`, records published without a stream to store them."""
    pending: int


class NatsMetricsSink:
    """The trainer's MetricsSink over NATS: `publish()` never blocks or raises; see the module docstring."""

    def __init__(
        self,
        options: ConnectionOptions,
        *,
        namespace: str,
        job: str,
        world_size: int,
        capacity: int = 1024,
        publish_timeout_s: float = 2.0,
        close_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A name that can't be a subject fails here, at start, rather than every record later.
        token(namespace)
        token(job)
        if capacity < 1 or world_size < 1:
            raise ValueError("capacity and world_size must be at least 1")
        self._options, self._namespace, self._job, self._world_size = options, namespace, job, world_size
        self._capacity, self._clock = capacity, clock
        self._publish_timeout_s, self._close_timeout_s = publish_timeout_s, close_timeout_s
        self._rng = random.Random()

        # Shared with the training thread, under the lock.
        self._lock = threading.Lock()
        self._buffer: deque[tuple[StepRecord, float]] = deque()
        self._pump_waiting = False
        self._closed = False
        self._sent = self._dropped = self._unstored = 0

        # The background thread's own.
        self._background = BackgroundLoop(self._main, thread_name=f"nats-metrics-{job}", what="the NATS metrics thread")
        self._client: Client | None = None
        self._in_flight = False
        self._streams: dict[str, tuple[str | None, float]] = {}
        """Per subject: the stream storing it (None: none) and when that was looked up."""
        self._background.start()

    # --- the training thread's side -------------------------------------------------------------------------

    def publish(self, record: StepRecord) -> None:
        measured_at = self._clock()
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            if len(self._buffer) >= self._capacity:
                self._buffer.popleft()
                self._dropped += 1
            self._buffer.append((record, measured_at))
            wake, self._pump_waiting = self._pump_waiting, False
        if wake:  # a cross-thread wakeup costs a syscall: only when the pump sleeps on an empty buffer
            self._background.wake()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._background.begin_close()
        # The loop gives up delivering after close_timeout_s and closing the connection after one more second.
        if not self._background.join(self._close_timeout_s + CLOSE_CONNECTION_TIMEOUT_S + 1.0):
            logger.warning("NATS metrics thread still busy after close(); abandoning it (daemon thread)")
            with self._lock:  # whatever it still holds will not be sent: close() promised to count it
                self._dropped += len(self._buffer)
                self._buffer.clear()

    def counters(self) -> SinkCounters:
        with self._lock:
            return SinkCounters(self._sent, self._dropped, self._unstored, len(self._buffer))

    @property
    def sent(self) -> int:
        return self.counters().sent

    @property
    def dropped(self) -> int:
        return self.counters().dropped

    # --- the background thread's side -----------------------------------------------------------------------

    async def _main(self) -> None:
        pump = asyncio.create_task(self._pump())
        closing = asyncio.create_task(self._background.closing.wait())
        await asyncio.wait({pump, closing}, return_when=asyncio.FIRST_COMPLETED)
        failed_early = pump.done()  # it only returns by itself when closing
        if failed_early and (failure := pump.exception()) is not None:
            logger.error("NATS metrics publisher stopped (records are dropped from now on): %r", failure)
        await closing
        # The pump returns once the buffer is empty; past the deadline it is cancelled (it may be connecting, which
        # can lose a cancellation: see loop_thread) and what is left is counted below.
        await asyncio.wait({pump}, timeout=self._close_timeout_s)
        await cancel_until_done(pump)
        if not failed_early and pump.done() and not pump.cancelled() and (failure := pump.exception()) is not None:
            logger.error("NATS metrics publisher failed while closing: %r", failure)
        with self._lock:
            self._dropped += len(self._buffer) + (1 if self._in_flight else 0)
            self._buffer.clear()
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.close(), CLOSE_CONNECTION_TIMEOUT_S)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                logger.debug("closing the NATS connection: %s", exc)
        counters = self.counters()
        logger.info("NATS metrics sink closed: %d sent, %d dropped", counters.sent, counters.dropped)

    async def _pump(self) -> None:
        self._client = await connect(self._options)
        js = self._client.jetstream(timeout=self._publish_timeout_s)
        while (item := await self._next()) is not None:
            record, measured_at = item
            try:
                message = WorkerMetrics.from_step(
                    record,
                    namespace=self._namespace,
                    job=self._job,
                    world_size=self._world_size,
                    measured_at_unix_s=measured_at,
                )
            except (ValidationError, AttributeError, TypeError) as exc:
                logger.warning("dropping a metrics record that does not fit WorkerMetrics: %s", exc)
                self._count_dropped()
                continue
            self._in_flight = True
            try:
                await self._deliver(self._client, js, message)
            except Exception:  # a bug here must cost one record, not every later one: the thread keeps going
                logger.exception("unexpected error publishing metrics %s", message.msg_id)
                self._count_dropped()
            self._in_flight = False

    async def _next(self) -> tuple[StepRecord, float] | None:
        """The oldest buffered record; None once closing has begun and the buffer is empty."""
        while True:
            with self._lock:
                if self._buffer:
                    return self._buffer.popleft()
                self._pump_waiting = True
            if self._background.closing.is_set():
                return None
            await self._background.wakeup.wait()
            self._background.wakeup.clear()

    async def _deliver(self, client: Client, js: JetStreamContext, message: WorkerMetrics) -> None:
        payload = encode_metrics(message)
        failures = 0
        while True:
            if not client.is_connected:
                await asyncio.sleep(DISCONNECTED_POLL_S)
                continue
            outcome = await self._publish_once(client, js, message, payload)
            if outcome is not _Outcome.RETRY:
                if outcome is _Outcome.DROPPED:
                    self._count_dropped()
                return
            failures += 1
            if failures >= MAX_ATTEMPTS:
                logger.warning("dropping metrics %s after %d failed publishes", message.msg_id, failures)
                self._count_dropped()
                return
            await asyncio.sleep(backoff_delay(failures, RETRY_BASE_S, RETRY_MAX_S, self._rng))

    async def _publish_once(
        self, client: Client, js: JetStreamContext, message: WorkerMetrics, payload: bytes
    ) -> _Outcome:
        try:
            stream = await self._stream_for(js, message.subject)
            if stream is None:
                await client.publish(message.subject, payload)
                self._count_sent(stored=False)
                return _Outcome.SENT
            try:
                await js.publish(message.subject, payload)
            except NoStreamResponseError:  # the stream was deleted since we looked
                self._streams.pop(message.subject, None)
                return _Outcome.RETRY
        except ServiceUnavailableError as exc:  # JetStream briefly unavailable (restoring, electing a leader)
            logger.debug("metrics %s: %s; retrying", message.msg_id, exc)
            return _Outcome.RETRY
        except (APIError, nats.errors.MaxPayloadError) as exc:  # refused for good, e.g. too large
            logger.warning("metrics %s rejected: %s", message.msg_id, exc)
            return _Outcome.DROPPED
        except (nats.errors.Error, TimeoutError, OSError) as exc:  # a lost ack or a lost connection
            logger.debug("metrics %s: %s; retrying", message.msg_id, exc)
            return _Outcome.RETRY
        self._count_sent(stored=True)
        return _Outcome.SENT

    async def _stream_for(self, js: JetStreamContext, subject: str) -> str | None:
        """The stream that stores `subject`, or None (JetStream off, or no such stream yet: asked again later).

        Looked up rather than discovered by publishing: a JetStream publish that no stream answers waits out its
        ack timeout whenever a plain subscriber listens on the subject, and every retry would reach that subscriber
        again."""
        known = self._streams.get(subject)
        now = time.monotonic()
        if known is not None and (known[0] is not None or now - known[1] < STREAM_RECHECK_S):
            return known[0]
        try:
            name: str | None = await js.find_stream_name_by_subject(subject)
        except (NotFoundError, ServiceUnavailableError):
            name = None
        if name is None and known is None:
            logger.warning("no JetStream stream stores %s: publishing without storage", subject)
        self._streams[subject] = (name, now)
        return name

    def _count_sent(self, *, stored: bool) -> None:
        with self._lock:
            self._sent += 1
            self._unstored += not stored

    def _count_dropped(self) -> None:
        with self._lock:
            self._dropped += 1
