"""The operator's NATS edge: the rebalancer's reports on jobs, read from the reports KV bucket.

One connection for the whole operator, opened on first use and kept (nats-py reconnects by itself). Any failure
— no server yet, a bucket not created yet, a malformed entry — is logged at debug level and returns None: a
status field that is not refreshed is the whole cost, never a failing handler.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from moeops.bus.buckets import ensure_reports_bucket, latest_report
from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.messages import BadMessage
from moeops.bus.reports import RebalanceReport

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
RETRY_AFTER_S = 30.0
"""After a failed connect, reads return None at once for this long (timers of many jobs must not queue up)."""


class ReportReader:
    def __init__(self, options: ConnectionOptions) -> None:
        self._options = options
        self._client: Client | None = None
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0

    async def report(self, namespace: str, job: str) -> RebalanceReport | None:
        try:
            kv = await self._bucket()
            return await latest_report(kv, namespace, job)
        except BadMessage as exc:
            logger.warning("the rebalancer's report on %s/%s is unreadable: %s", namespace, job, exc)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            logger.debug("no rebalancer report for %s/%s: %s", namespace, job, exc)
            self._kv = None  # look the bucket up again next time (it may not have existed)
        return None

    async def _bucket(self) -> KeyValue:
        async with self._lock:
            if self._client is None:
                now = time.monotonic()
                if now < self._retry_at:
                    raise nats.errors.NoServersError
                self._retry_at = now + RETRY_AFTER_S
                self._client = await asyncio.wait_for(connect(self._options), CONNECT_TIMEOUT_S)
            if self._kv is None:
                self._kv = await ensure_reports_bucket(self._client.jetstream(timeout=2.0))
            return self._kv

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
