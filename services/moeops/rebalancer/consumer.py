"""The rebalancer's way into the METRICS stream: a durable JetStream push consumer, acknowledged in batches.

Why push: nats-py's pull `fetch()` tops out near 21k messages/s on one core (the issue's measurement: a request
and a reply inbox per batch, a future per message); a push consumer hands every message to one callback, which
only appends it to an inbox that the service drains a batch at a time.

- Ack policy ALL: acking a message acknowledges every earlier one, so the service acks the last message of a
  batch once the batch is folded in and planned. A crash in between redelivers the batch (the aggregator drops
  the records it already has as duplicates); a restarted service resumes after the last batch it acked.
  The price: messages in flight when a connection drops are acknowledged by the next ack without having been
  read. The server would only deliver them again after `ack_wait`, behind newer steps of the same ranks, where
  the aggregator drops them as stale anyway.
- `max_ack_pending` bounds what the server sends before an ack, so the inbox (and nats-py's pending queue,
  sized above it) never overflows: nats-py drops a message its queue cannot take, and a later ack-all would
  acknowledge the lost message with the rest.
- Flow control (and the idle heartbeats it needs): the server sends a window of messages, then waits for the
  client to confirm it read them, so a consumer that falls behind is slowed down rather than cut off as a slow
  consumer. `max_ack_pending` bounds what is in flight as well. `ConsumerLimits(flow_control=False)` turns flow
  control off; benchmarks/bus_ingest.py compares both: on this 2-core machine, shared with other work, runs
  at 5k messages/s favoured either one by turns (p99 70–320 ms), so the default stays the safer one.
- The consumer is durable, with its deliver subject stored in its configuration: after a server restart or a
  reconnect the client subscribes to the same subject again and delivery resumes. A stored consumer of another
  shape (the pull consumer of earlier versions, or other limits) is replaced by one that starts after its ack
  floor, so no acknowledged message is read twice and none unacknowledged is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerLimits:
    max_ack_pending: int = 16_384
    """Messages the server delivers ahead of the last ack: at 50k messages/s, a third of a second of them."""
    ack_wait_s: float = 30.0
    """Unacknowledged this long, a message is delivered again."""
    idle_heartbeat_s: float = 2.0
    flow_control: bool = True


def consumer_config(
    durable: str, filter_subject: str, deliver_subject: str, limits: ConsumerLimits, start_sequence: int = 0
) -> ConsumerConfig:
    """The push consumer's configuration; `start_sequence` > 0 starts there instead of at the stream's start."""
    return ConsumerConfig(
        durable_name=durable,
        description="moeops rebalancer: worker metrics",
        deliver_subject=deliver_subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_sequence > 0 else DeliverPolicy.ALL,
        opt_start_seq=start_sequence if start_sequence > 0 else None,
        ack_policy=AckPolicy.ALL,
        ack_wait=limits.ack_wait_s,
        max_ack_pending=limits.max_ack_pending,
        filter_subject=filter_subject,
        flow_control=limits.flow_control,
        idle_heartbeat=limits.idle_heartbeat_s,
    )


def _same_shape(stored: ConsumerConfig, wanted: ConsumerConfig) -> bool:
    def policy(value: object) -> object:  # the server's answer may hold a plain string
        return getattr(value, "value", value)

    return (
        bool(stored.deliver_subject)
        and not stored.deliver_group
        and policy(stored.ack_policy) == policy(wanted.ack_policy)
        and stored.filter_subject == wanted.filter_subject
        and stored.max_ack_pending == wanted.max_ack_pending
        and bool(stored.flow_control) == bool(wanted.flow_control)
        and stored.ack_wait == wanted.ack_wait
        and stored.idle_heartbeat == wanted.idle_heartbeat
    )


class MetricsConsumer:
    """Delivers the stream's messages in batches: `start()`, then `next_batch()` and `ack()` in a loop."""

    def __init__(
        self, js: JetStreamContext, stream: str, filter_subject: str, durable: str, limits: ConsumerLimits
    ) -> None:
        self._js = js
        self._stream = stream
        self._filter = filter_subject
        self._durable = durable
        self._limits = limits
        self._inbox: list[Msg] = []
        self._arrived = asyncio.Event()
        self._subscription: JetStreamContext.PushSubscription | None = None
        self.ack_errors = 0

    async def start(self, deliver_subject: str) -> ConsumerInfo:
        """Creates (or adopts, or replaces) the durable consumer and subscribes to its deliveries.

        `deliver_subject` is used only when the consumer is created (pass a fresh inbox)."""
        info = await self._ensure(deliver_subject)
        assert info.config.deliver_subject is not None  # _ensure only keeps push consumers
        self._subscription = await self._js.subscribe_bind(
            stream=self._stream,
            config=info.config,
            consumer=self._durable,
            cb=self._on_message,
            manual_ack=True,
            # Redeliveries count towards max_ack_pending too: the queue can never hold more than this.
            pending_msgs_limit=2 * self._limits.max_ack_pending,
        )
        return info

    async def _ensure(self, deliver_subject: str) -> ConsumerInfo:
        wanted = consumer_config(self._durable, self._filter, deliver_subject, self._limits)
        try:
            stored: ConsumerInfo = await self._js.consumer_info(self._stream, self._durable)
        except NotFoundError:
            return await self._add(wanted)
        if _same_shape(stored.config, wanted):
            return stored
        floor = stored.ack_floor.stream_seq if stored.ack_floor is not None and stored.ack_floor.stream_seq else 0
        logger.info("replacing consumer %s (another shape); resuming after stream sequence %d", self._durable, floor)
        await self._js.delete_consumer(self._stream, self._durable)
        return await self._add(consumer_config(self._durable, self._filter, deliver_subject, self._limits, floor + 1))

    async def _add(self, config: ConsumerConfig) -> ConsumerInfo:
        info: ConsumerInfo = await self._js.add_consumer(self._stream, config)  # (nats-py's **params: untyped)
        return info

    async def _on_message(self, message: Msg) -> None:
        self._inbox.append(message)
        self._arrived.set()

    async def next_batch(self, most: int, stop: asyncio.Event, timeout_s: float) -> list[Msg]:
        """Up to `most` delivered messages, oldest first; [] if none came within `timeout_s` or `stop` was set."""
        # Yield once even with messages waiting, so that nats-py's reader and flusher run between batches (the
        # last ack goes out, the socket is read) rather than only when the inbox runs dry.
        await asyncio.sleep(0)
        if not self._inbox:
            stopping = asyncio.ensure_future(stop.wait())
            arriving = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait((stopping, arriving), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                arriving.cancel()
        batch, self._inbox = self._inbox[:most], self._inbox[most:]
        if not self._inbox:
            self._arrived.clear()
        return batch

    async def ack(self, last: Msg) -> None:
        """Acknowledges `last` and every message delivered before it (ack policy ALL): one ack for a batch."""
        try:
            await last.ack()
        except (nats.errors.Error, OSError) as exc:  # delivered again later: the aggregator drops duplicates
            self.ack_errors += 1
            logger.debug("ack failed: %s", exc)

    async def close(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._subscription.unsubscribe()
            self._subscription = None
