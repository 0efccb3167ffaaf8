"""Rank 0 of a training job puts the job's progress into the KV bucket `moeops-training-progress` (`bus.progress`).

`publish(record)` is a MetricsSink's: the training thread calls it once per step, and it only hands the step to a
`ProgressMeter` under a lock. A background thread with an asyncio loop of its own (the model of `NatsMetricsSink` and
`PlanWatcher`) connects — nats-py keeps retrying while no server answers — and puts the newest progress at most every
`interval_s`, at once after the last step, and once more on `close()`.

It never blocks or fails training. Every put (bucket lookup included) is bounded by `put_timeout_s`; a failure (no
server, no JetStream, a refused write) is logged once per kind until a put succeeds again, and the next interval
tries again with the newest figures (an old step is never worth a retry). Nothing is buffered: progress is a latest
value. `close()` waits for the final put and the connection's close, each bounded, then returns; a first connect
still under way gets `put_timeout_s` more (a short job's last step is still put), after which the progress is not
reported (and the bucket's TTL drops the job's older entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from .buckets import ensure_progress_bucket, put_progress
from .connection import ConnectionOptions, connect
from .loop_thread import BackgroundLoop, cancel_until_done
from .progress import JobProgress, ProgressMeter
from .records import StepRecord

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0
CLOSE_CONNECTION_TIMEOUT_S = 1.0


class ProgressPutter:
    """The trainer's progress sink over NATS (rank 0 only); see the module docstring."""

    def __init__(
        self,
        options: ConnectionOptions,
        *,
        namespace: str,
        job: str,
        total_steps: int,
        tokens_per_step: int,
        interval_s: float = DEFAULT_INTERVAL_S,
        put_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        newest_checkpoint: Callable[[], int | None] = lambda: None,
    ) -> None:
        """`newest_checkpoint`: the step of the newest complete checkpoint (read in the putter's thread at each put:
        a checkpoint written after the last step is still reported)."""
        if interval_s <= 0 or put_timeout_s <= 0:
            raise ValueError("interval_s and put_timeout_s must be positive")
        # Raises for a name that cannot be a key: at start, not at every put.
        meter = ProgressMeter(namespace, job, total_steps=total_steps, tokens_per_step=tokens_per_step)
        self._options, self._job, self._total = options, job, total_steps
        self._interval_s, self._put_timeout_s = interval_s, put_timeout_s
        self._clock, self._monotonic = clock, monotonic
        self._newest_checkpoint = newest_checkpoint
        self._sent_checkpoint: int | None = None

        # Shared with the training thread, under the lock.
        self._lock = threading.Lock()
        self._meter = meter
        self._unsent = False
        """A step was observed since the last successful put."""
        self._closed = False
        self.sent = 0
        self.failed = 0

        # The background thread's own.
        self._background = BackgroundLoop(
            self._main, thread_name=f"nats-progress-{job}", what="the progress putter (progress is no longer reported)"
        )
        self._failing: str | None = None
        """The kind of the last failure, logged once at warning level until a put succeeds again."""
        self._background.start()

    # --- the training thread's side -------------------------------------------------------------------------

    def publish(self, record: StepRecord) -> None:
        at = self._monotonic()
        with self._lock:
            if self._closed:
                return
            self._meter.observe(record.step, record.loss, record.step_seconds, at)
            self._unsent = True
        if record.step >= self._total:  # the last step: put it now, not at the next interval
            self._background.wake()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._background.begin_close()
        # Connecting, the final put and closing the connection are each bounded (a put in flight may end first).
        if not self._background.join(3 * self._put_timeout_s + CLOSE_CONNECTION_TIMEOUT_S + 1.0):
            logger.warning("NATS progress thread still busy after close(); abandoning it (daemon thread)")

    # --- the background thread's side -----------------------------------------------------------------------

    async def _main(self) -> None:
        client = await self._connected()
        if client is None:
            return
        try:
            kv: KeyValue | None = None
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._background.wakeup.wait(), self._interval_s)
                self._background.wakeup.clear()
                closing = self._background.closing.is_set()
                kv = await self._put_newest(client, kv)
                if closing:
                    return
        finally:
            with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                await asyncio.wait_for(client.close(), CLOSE_CONNECTION_TIMEOUT_S)

    async def _connected(self) -> Client | None:
        """A connection; None when there is none by `put_timeout_s` after closing began (or the connect failed for
        good: logged). A short job may close while its first connect is under way: its last step is still put."""
        connecting = asyncio.ensure_future(connect(self._options))
        closing = asyncio.ensure_future(self._background.closing.wait())
        await asyncio.wait({connecting, closing}, return_when=asyncio.FIRST_COMPLETED)
        await cancel_until_done(closing)
        if not connecting.done():
            await asyncio.wait({connecting}, timeout=self._put_timeout_s)
        if not connecting.done():
            await cancel_until_done(connecting)  # connect() closes a connection made just as it was cancelled
            logger.warning("progress of %s not reported: no NATS server answered before training ended", self._job)
            return None
        failure = None if connecting.cancelled() else connecting.exception()
        if connecting.cancelled() or failure is not None:  # e.g. a refused identity: training goes on without
            logger.warning("progress of %s not reported: cannot connect to NATS: %r", self._job, failure)
            return None
        return connecting.result()

    async def _put_newest(self, client: Client, kv: KeyValue | None) -> KeyValue | None:
        """Put the newest progress if a step came since the last put; returns the bucket handle to reuse."""
        checkpoint = self._checkpoint_step()
        with self._lock:
            if not self._unsent and checkpoint == self._sent_checkpoint:
                return kv
            self._unsent = False
            try:
                progress = self._meter.progress(self._clock(), checkpoint)
            except ValueError as exc:  # figures JobProgress refuses: a bug, not worth stopping the reports for
                progress = None
                logger.warning("progress of %s does not fit JobProgress: %s", self._job, exc)
        if progress is None:
            return kv
        if not client.is_connected:  # nats-py reconnects meanwhile; a put now would only wait out its timeout
            self._failed(progress, "NotConnected", "not connected to NATS")
            return kv
        try:
            kv = await asyncio.wait_for(self._put(client, kv, progress), self._put_timeout_s)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self._failed(progress, type(exc).__name__, str(exc))
            return None  # look the bucket up again: it may have been deleted, or JetStream restarted
        except Exception as exc:  # an unexpected client error must not end the reports
            logger.exception("putting the progress of %s failed", self._job)
            self._failed(progress, type(exc).__name__, str(exc), logged=True)
            return None
        self.sent += 1
        self._sent_checkpoint = progress.checkpoint_step
        if self._failing is not None:
            logger.info("progress of %s reported again", self._job)
            self._failing = None
        return kv

    def _checkpoint_step(self) -> int | None:
        try:
            return self._newest_checkpoint()
        except (OSError, ValueError) as exc:  # a checkpoint folder being written or pruned: next time
            logger.debug("newest checkpoint of %s not read: %s", self._job, exc)
            return self._sent_checkpoint

    async def _put(self, client: Client, kv: KeyValue | None, progress: JobProgress) -> KeyValue:
        if kv is None:
            kv = await ensure_progress_bucket(client.jetstream(timeout=self._put_timeout_s))
        await put_progress(kv, progress)
        return kv

    def _failed(self, progress: JobProgress, kind: str, detail: str, *, logged: bool = False) -> None:
        self.failed += 1
        with self._lock:
            self._unsent = True  # the next interval puts the newest step instead
        if not logged:
            level = logging.DEBUG if self._failing == kind else logging.WARNING
            logger.log(level, "progress of %s (step %d) not reported: %s: %s", self._job, progress.step, kind, detail)
        self._failing = kind
