"""The aggregator: the MOEOPS_CARBON stream into the carbon ledger, checkpointed, with totals per workload out.

One per cluster (a Deployment with one replica: two would each count every delta into their own checkpoint).

Reading. A durable pull consumer with explicit acks reads the stream in order. The aggregator's own state, not the
consumer's, says where it is: the checkpoint in the `moeops-carbon` KV bucket holds the ledger snapshot and the
stream sequence it covers. On start the ledger is restored from it and the consumer is created afresh to deliver
from the next sequence; restarting anything (agent, aggregator, NATS) therefore neither skips nor repeats a delta.

Order. The ledger keeps one high-water mark per meter, so a delta applied after a later one of its meter would be
dropped. The stream holds only energy subjects, so its sequences are consecutive; a message whose sequence is not
the next one means deliveries were lost on the way (a fetch answered into a connection that had just dropped: they
would come again only after `ack_wait`, behind newer deltas). Then the consumer is recreated at the next sequence.
The same happens after an intensity lookup fails (`IntensityUnavailableError`: the delta stays unapplied and is
tried again after `retry_s`). A stream that no longer holds the next sequence (retention) is counted in `lost`.

Committing, per fetched batch: the deltas are applied, the totals of the workloads they touched are written to the
bucket (`workload.<namespace>.<kind>.<name>`), then the checkpoint, and only then are the messages acked; a
message that cannot be decoded is counted by reason and terminated, never fatal. If the bucket cannot be written
the messages stay unacked and the next batch's commit covers them. A crash between the totals and the checkpoint
replays from the previous checkpoint and writes the same totals again.

A checkpoint that exists but cannot be read stops the aggregator with an error rather than counting from zero
(which would overwrite the totals with what the stream still holds: a week at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.health import Heartbeat
from moeops.bus.messages import BadMessage
from moeops.bus.streams import StreamRetention
from moeops.bus.subjects import CARBON_ENERGY_ROOT, CARBON_STREAM
from moeops.carbon.accounting.intensity import IntensitySource, IntensityUnavailableError
from moeops.carbon.accounting.ledger import DEFAULT_PUE, CarbonLedger, WorkloadKey
from moeops.carbon.accounting.messages import LedgerCheckpoint, WorkloadCarbon, decode_carbon, workload_totals
from moeops.carbon.accounting.store import (
    ensure_carbon_bucket,
    ensure_carbon_stream,
    load_checkpoint,
    put_workload,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

_NATS_TROUBLE = (nats.errors.Error, APIError, TimeoutError, OSError)
"""What a request to a server that is away, restarting or electing a leader raises."""


class CheckpointUnreadable(RuntimeError):
    """The stored checkpoint cannot be read: fix or delete it (see the module docstring)."""


@dataclass(frozen=True)
class AggregatorSettings:
    durable: str = "moeops-carbon-aggregator"
    batch: int = 512
    fetch_timeout_s: float = 0.5
    ack_wait_s: float = 60.0
    retry_s: float = 1.0
    """The pause after a failed request or intensity lookup before trying again."""
    replicas: int = 1


@dataclass
class AggregatorCounters:
    applied: int = 0
    replayed: int = 0
    """Deltas the ledger already had (resends beyond the duplicate window)."""
    bad_messages: Counter[str] = field(default_factory=Counter)
    """By `BadMessageReason` value: terminated, never applied."""
    unpriced: int = 0
    resets: int = 0
    """Consumers recreated after a gap in the delivered sequences or an intensity failure."""
    lost: int = 0
    """Stream messages gone (retention) before the aggregator read them."""
    checkpoints: int = 0
    store_errors: int = 0


class CarbonAggregator:
    """`run(stop)` consumes, applies and checkpoints until `stop` is set; see the module docstring."""

    def __init__(
        self,
        options: ConnectionOptions,
        intensity: IntensitySource,
        *,
        pue: float = DEFAULT_PUE,
        settings: AggregatorSettings | None = None,
        retention: StreamRetention | None = None,
        on_totals: Callable[[Sequence[WorkloadCarbon]], None] | None = None,
    ) -> None:
        self._options = options
        self._intensity = intensity
        self.ledger = CarbonLedger(intensity, pue=pue)
        self.settings = settings or AggregatorSettings()
        self._retention = retention
        self._on_totals = on_totals
        """Called with the totals written (all of them after a restore), e.g. `CarbonTelemetry.record_totals`."""
        self.applied_sequence = 0
        """The last stream sequence folded into `ledger` (the checkpoint may be behind until the next commit)."""
        self.counters = AggregatorCounters()
        self.ready = asyncio.Event()
        """Set once the checkpoint is restored and the consumer is in place."""
        self.client: Client | None = None
        """The NATS client while `run` runs (the health server reads its state)."""
        self.heartbeat = Heartbeat("carbon aggregator's main loop", self.settings.fetch_timeout_s)
        """Beaten every fetch and every retry of the consumer's setup (both go round while NATS is away)."""
        self._settle: list[tuple[Msg, bool]] = []
        """Messages to ack (False) or terminate (True) after the next checkpoint."""
        self._touched: set[WorkloadKey] = set()
        self._dirty = False

    async def run(self, stop: asyncio.Event) -> None:
        self.client = client = await connect(self._options)
        try:
            js = client.jetstream()
            await ensure_carbon_stream(js, self._retention)
            kv = await ensure_carbon_bucket(js, self.settings.replicas)
            await self._restore(kv)
            subscription = await self._subscribe(js, stop)
            self.ready.set()
            while not stop.is_set() and subscription is not None:
                self.heartbeat.beat()
                in_order = self._apply(await self._fetch(subscription))
                await self._commit(kv)
                if not in_order:
                    self.counters.resets += 1
                    with contextlib.suppress(*_NATS_TROUBLE):
                        await subscription.unsubscribe()
                    subscription = await self._subscribe(js, stop)
            await self._commit(kv)
        finally:
            with contextlib.suppress(*_NATS_TROUBLE):
                await asyncio.wait_for(client.close(), 1.0)

    async def _restore(self, kv: KeyValue) -> None:
        try:
            checkpoint = await load_checkpoint(kv)
            if checkpoint is None:
                return
            self.ledger = CarbonLedger.restore(checkpoint.ledger, self._intensity)
        except (BadMessage, ValidationError) as exc:
            raise CheckpointUnreadable(f"the carbon ledger checkpoint cannot be read: {exc}") from exc
        self.applied_sequence = checkpoint.stream_sequence
        self._tell(workload_totals(self.ledger.workloads()))
        logger.info("carbon ledger restored; resuming after stream sequence %d", self.applied_sequence)

    async def _subscribe(self, js: JetStreamContext, stop: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        """A new consumer delivering from the sequence after `applied_sequence`; None if stopped meanwhile."""
        while not stop.is_set():
            self.heartbeat.beat()
            try:
                info = await js.stream_info(CARBON_STREAM)
                if info.state.first_seq > self.applied_sequence + 1:  # retention removed what we had not read
                    gone = info.state.first_seq - self.applied_sequence - 1
                    logger.error("the carbon stream no longer holds %d deltas the ledger never saw", gone)
                    self.counters.lost += gone
                    self.applied_sequence, self._dirty = info.state.first_seq - 1, True
                with contextlib.suppress(NotFoundError):
                    await js.delete_consumer(CARBON_STREAM, self.settings.durable)
                await js.add_consumer(CARBON_STREAM, self._consumer_config())
                return await js.pull_subscribe_bind(durable=self.settings.durable, stream=CARBON_STREAM)
            except _NATS_TROUBLE as exc:
                logger.warning("cannot set up the carbon consumer (%r); trying again", exc)
                await asyncio.sleep(self.settings.retry_s)
        return None

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.settings.durable,
            description="moeops carbon aggregator: energy deltas into the ledger",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied_sequence + 1,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_ack_pending=4 * self.settings.batch,
            filter_subject=f"{CARBON_ENERGY_ROOT}.>",
        )

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await subscription.fetch(self.settings.batch, timeout=self.settings.fetch_timeout_s)
        except TimeoutError:  # nothing new (nats.errors.TimeoutError is one too)
            return []
        except _NATS_TROUBLE as exc:
            logger.debug("fetch failed: %r", exc)
            await asyncio.sleep(min(self.settings.retry_s, self.settings.fetch_timeout_s))
            return []

    def _apply(self, messages: list[Msg]) -> bool:
        """Folds in the messages that continue the stream in order; False when the consumer must be recreated."""
        for message in messages:
            sequence = message.metadata.sequence.stream
            if sequence <= self.applied_sequence:  # delivered again: folded in already
                self._settle.append((message, False))
                continue
            if sequence != self.applied_sequence + 1:
                logger.warning("carbon stream: got %d after %d; re-reading from there", sequence, self.applied_sequence)
                return False
            try:
                delta = decode_carbon(message.subject, message.data)
            except BadMessage as exc:
                self.counters.bad_messages[exc.reason.value] += 1
                logger.warning("dropping a carbon message: %s", exc)
                self._settle.append((message, True))
            else:
                try:
                    charge = self.ledger.apply(delta)
                except IntensityUnavailableError as exc:
                    self.counters.unpriced += 1
                    logger.warning("no grid intensity for %s (%s); trying again", delta.msg_id, exc)
                    return False
                if charge is None:
                    self.counters.replayed += 1
                else:
                    self.counters.applied += 1
                    if delta.key is not None:
                        self._touched.add(delta.key)
                self._settle.append((message, False))
            self.applied_sequence, self._dirty = sequence, True
        return True

    async def _commit(self, kv: KeyValue) -> None:
        """Totals, then the checkpoint, then the acks (see the module docstring)."""
        if self._dirty:
            checkpoint = LedgerCheckpoint(stream_sequence=self.applied_sequence, ledger=self.ledger.snapshot())
            written = workload_totals(self.ledger.workloads(), self._touched)
            try:
                for totals in written:
                    await put_workload(kv, totals)
                await save_checkpoint(kv, checkpoint)
            except _NATS_TROUBLE as exc:
                self.counters.store_errors += 1
                logger.warning("cannot store the carbon checkpoint (%r); the next batch tries again", exc)
                await asyncio.sleep(min(self.settings.retry_s, self.settings.fetch_timeout_s))
                return
            self.counters.checkpoints += 1
            self._tell(written)
            self._touched.clear()
            self._dirty = False
        settle, self._settle = self._settle, []
        for message, terminate in settle:
            with contextlib.suppress(*_NATS_TROUBLE):  # unacked comes again and is settled then
                await (message.term() if terminate else message.ack())

    def _tell(self, totals: Sequence[WorkloadCarbon]) -> None:
        if self._on_totals is not None and totals:
            try:
                self._on_totals(totals)
            except Exception:  # a metrics sink must never stop the accounting
                logger.exception("the carbon totals callback failed")
