"""The node agent: energy deltas from this node into the MOEOPS_CARBON stream, losing none on the way.

Two tasks on one asyncio loop:

- the poller, every `poll_interval_s`: takes the deltas of the interval from a `DeltaSource` (a callable; in
  production NVML readings attributed to pods, see `cli.py`) and appends them to the on-disk `Spool`. It never
  awaits NATS, so a server that is away, slow or refusing does not delay a reading.
- the sender: publishes the spool's unacknowledged deltas in order, one JetStream publish at a time with
  `Nats-Msg-Id` = meter/epoch/sequence, and records in the spool how far the stream has acknowledged. Strictly in
  order because the aggregator's ledger keeps one high-water mark per meter: a delta stored after a later one of
  its meter would be dropped there. While NATS is down it waits (nats-py reconnects in the background) and the
  spool grows; when the server is back it sends the backlog. A publish whose ack was lost is sent again: the
  stream's duplicate window, and beyond it the ledger's marks, keep it from counting twice.

The agent never creates the stream (a thousand agents updating one stream configuration at start-up would race);
the aggregator does. Until it exists the deltas wait in the spool.

A sender that fails for good (refused credentials, a bug) ends `run` with its exception: the spool is safe on
disk, and a restarted pod does better than an agent that measures but never sends.

Polls and commits. The poller reads every `poll_interval_s` (default 1 s, `MOEOPS_CARBON_POLL_S`: the energy
counter is exact at any rate; 0.1 s where power-only GPUs need a close power integral; the reader's adaptive
interval is not used here), but takes the source's deltas and spools them (attribution, one write and one fsync)
only every `commit_interval_s` (default 1 s): between commits a `SampledSource` only samples (`NodeSource.sample`:
the NVML read, whose energy the next commit returns), so the energy still integrates every reading and its total is
the same, while attribution and the spool cost a tenth at 10 Hz. A source without `sample` is committed every poll.

Stopping: one last poll, which commits, then up to `drain_timeout_s` to send what is pending; the rest stays in
the spool for the next start. A crash (SIGKILL, OOM) loses nothing that `Spool.append` returned: the next agent
on the same spool directory sends it. What it does lose: the energy read since the last commit, at most one
commit interval plus one poll (≈ 1.1 s of the node's energy by default), on top of the time until the agent
restarts, which a restarted agent never measured either (NVML's counter is not persisted). A shorter
`commit_interval_s` narrows that window at the cost of more spool writes (`commit_interval_s = poll_interval_s`
commits every poll, as the agent did before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError
from pydantic import ValidationError

from moeops.bus.connection import ConnectionOptions, backoff_delay, connect
from moeops.bus.health import Heartbeat
from moeops.bus.loop_thread import cancel_until_done
from moeops.bus.subjects import MSG_ID_HEADER
from moeops.carbon.accounting.ledger import EnergyDelta
from moeops.carbon.accounting.messages import CarbonEnergy, encode_carbon
from moeops.carbon.node.spool import Spool

logger = logging.getLogger(__name__)

DeltaSource = Callable[[], Sequence[EnergyDelta]]
"""What the agent polls: the energy deltas measured since the previous call. Their `id.source` names the meter
(unique in the cluster, e.g. `<node>/gpu-<uuid>`); epoch and sequence are the spool's to give."""


@runtime_checkable
class SampledSource(Protocol):
    """A `DeltaSource` that can take a reading without handing out deltas: the agent calls `sample()` on the polls
    between two commits, and the next call returns the energy of every reading since the previous call."""

    def sample(self) -> None: ...
    def __call__(self) -> Sequence[EnergyDelta]: ...


DISCONNECTED_POLL_S = 0.05
"""How often the sender checks whether nats-py has reconnected."""


@dataclass(frozen=True)
class AgentSettings:
    poll_interval_s: float = 1.0
    commit_interval_s: float = 1.0
    """How often a `SampledSource`'s deltas are taken and spooled (see the module docstring for what a crash loses
    in between); a commit falls on the first poll at least this long (less half a poll) after the previous one."""
    publish_batch: int = 256
    """Deltas sent between two acknowledgements in the spool (one state fsync per batch)."""
    publish_timeout_s: float = 2.0
    retry_base_s: float = 0.1
    retry_max_s: float = 5.0
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        times = (self.poll_interval_s, self.commit_interval_s, self.publish_timeout_s, self.retry_base_s)
        if min(*times, self.drain_timeout_s) <= 0:
            raise ValueError(f"agent times must be positive: {self}")
        if self.publish_batch < 1:
            raise ValueError("publish_batch must be at least 1")


@dataclass
class AgentCounters:
    polls: int = 0
    commits: int = 0
    """Polls that took the source's deltas (every poll, for a source without `sample`)."""
    source_errors: int = 0
    """Polls whose source (or sample) raised (logged; the next poll measures from where that one left off)."""
    invalid: int = 0
    """Deltas that cannot go on the bus (e.g. a node name that is no subject token): dropped, not spooled."""
    published: int = 0
    duplicates: int = 0
    """Acks saying the stream already held the delta (a resend)."""
    publish_failures: int = 0


class NodeAgent:
    """`run(stop)` polls, spools and sends until `stop` is set; see the module docstring."""

    def __init__(
        self,
        source: DeltaSource,
        spool: Spool,
        options: ConnectionOptions,
        settings: AgentSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._sample = source.sample if isinstance(source, SampledSource) else None
        self._clock = clock
        self._commit_at_s = -float("inf")
        self.spool = spool
        self._options = options
        self.settings = settings or AgentSettings()
        self.counters = AgentCounters()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        """Set while the sender has nothing left to send."""
        self._client: Client | None = None
        self._rng = random.Random()
        self.heartbeat = Heartbeat("carbon agent's poller", self.settings.poll_interval_s)
        """Beaten every poll (the poller never awaits NATS): see `moeops.bus.health`."""

    @property
    def client(self) -> Client | None:
        """The sender's NATS client once it connected (the health server reads its state)."""
        return self._client

    def poll_once(self, *, commit: bool = False) -> int:
        """One poll: a sample, or when a commit is due (or `commit`) the source's deltas into the spool; how many
        were spooled. Never raises for the source."""
        self.counters.polls += 1
        now_s = self._clock()
        if self._sample is not None and not commit and now_s < self._commit_at_s:
            self._read(self._sample)
            return 0
        settings = self.settings
        self._commit_at_s = now_s + settings.commit_interval_s - settings.poll_interval_s / 2
        self.counters.commits += 1
        deltas = self._read(lambda: list(self._source()))
        if not deltas:
            return 0
        usable = [delta for delta in deltas if _bus_ready(delta)]
        self.counters.invalid += len(deltas) - len(usable)
        stamped = self.spool.append(usable)
        if stamped:
            self._idle.clear()
            self._wakeup.set()
        return len(stamped)

    def _read(self, read: Callable[[], list[EnergyDelta] | None]) -> list[EnergyDelta] | None:
        try:
            return read()
        except Exception:  # a failing reading must not stop the agent: the next poll reads again
            self.counters.source_errors += 1
            logger.exception("energy source failed")
            return None

    async def run(self, stop: asyncio.Event) -> None:
        sender = asyncio.create_task(self._send_forever())
        try:
            while not stop.is_set():
                self.heartbeat.beat()
                self.poll_once()
                if sender.done():  # it only ends by failing (bad credentials, a bug): let the pod restart
                    sender.result()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.poll_interval_s)
            self.poll_once(commit=True)  # the energy since the last commit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.drain_timeout_s)
        finally:
            await cancel_until_done(sender)
            if self._client is not None:
                with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                    await asyncio.wait_for(self._client.close(), 1.0)

    async def _send_forever(self) -> None:
        self._client = client = await connect(self._options)
        js = client.jetstream(timeout=self.settings.publish_timeout_s)
        failures = 0
        while True:
            batch = self.spool.unacked(self.settings.publish_batch)
            if not batch:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not client.is_connected:
                await asyncio.sleep(DISCONNECTED_POLL_S)
                continue
            sent = await self._send(js, batch)
            if sent is not None:
                self.spool.ack(sent)
            if sent is batch[-1]:
                failures = 0
            else:
                failures += 1
                self.counters.publish_failures += 1
                delay = backoff_delay(failures, self.settings.retry_base_s, self.settings.retry_max_s, self._rng)
                await asyncio.sleep(delay)

    async def _send(self, js: JetStreamContext, batch: list[EnergyDelta]) -> EnergyDelta | None:
        """Publishes `batch` in order, stopping at the first failure; the last delta the stream acknowledged."""
        last: EnergyDelta | None = None
        for delta in batch:
            message = CarbonEnergy.of(delta)
            try:
                ack = await js.publish(message.subject, encode_carbon(message), headers={MSG_ID_HEADER: message.msg_id})
            except NoStreamResponseError:
                logger.warning(
                    "no stream stores %s yet (the aggregator creates it); keeping it spooled", message.subject
                )
                return last
            except (APIError, nats.errors.Error, TimeoutError, OSError) as exc:  # a lost ack, or a lost server
                logger.debug("carbon delta %s not acknowledged: %r; sending again later", message.msg_id, exc)
                return last
            self.counters.published += 1
            self.counters.duplicates += bool(ack.duplicate)
            last = delta
        return last


def _bus_ready(delta: EnergyDelta) -> bool:
    """Whether the delta can become a `CarbonEnergy` (checked before spooling: a spooled delta that can never be
    sent would block every later one)."""
    try:
        CarbonEnergy.of(delta)
    except ValidationError as exc:
        logger.warning("dropping an energy delta that cannot go on the bus: %s", exc)
        return False
    return True
