"""The operator's NATS edge: one connection, KV buckets opened on first use, reads that never raise.

The operator copies what services keep in KV buckets into status (rank 0's progress, the rebalancer's reports,
the carbon aggregator's totals: `handlers/status_sources.py`), read by its status loop. One connection for the whole
operator, opened on first use and kept (nats-py reconnects by itself). Any failure — no server yet, a bucket not
created yet, a malformed entry — is logged and returns None: a status field that is not refreshed is the whole
cost, never a failing handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.messages import BadMessage

logger = logging.getLogger(__name__)

T = TypeVar("T")
BucketOpener = Callable[[JetStreamContext], Awaitable[KeyValue]]
"""E.g. `ensure_reports_bucket`: finds (or creates) one bucket."""

CONNECT_TIMEOUT_S = 5.0
RETRY_AFTER_S = 30.0
"""After a failed connect, reads return None at once for this long (a pass over many objects must not queue up)."""


class BusReader:
    def __init__(self, options: ConnectionOptions) -> None:
        self._options = options
        self._client: Client | None = None
        self._buckets: dict[BucketOpener, KeyValue] = {}
        self._lock = asyncio.Lock()
        self._retry_at = 0.0

    async def read(self, bucket: BucketOpener, get: Callable[[KeyValue], Awaitable[T | None]], what: str) -> T | None:
        """`get(kv)` on the bucket `bucket` opens; None (logged, with `what` naming the value) on any failure."""
        try:
            return await get(await self._bucket(bucket))
        except BadMessage as exc:
            logger.warning("%s is unreadable: %s", what, exc)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            logger.debug("no %s: %s", what, exc)
            self._buckets.pop(bucket, None)  # look the bucket up again next time (it may not have existed)
        return None

    async def _bucket(self, bucket: BucketOpener) -> KeyValue:
        async with self._lock:
            if self._client is None:
                now = time.monotonic()
                if now < self._retry_at:
                    raise nats.errors.NoServersError
                self._retry_at = now + RETRY_AFTER_S
                self._client = await asyncio.wait_for(connect(self._options), CONNECT_TIMEOUT_S)
            if bucket not in self._buckets:
                self._buckets[bucket] = await bucket(self._client.jetstream(timeout=2.0))
            return self._buckets[bucket]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
