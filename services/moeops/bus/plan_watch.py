"""The newest rebalance plan of one job, read from the plans KV bucket by a background thread.

The trainer's rank 0 holds one of these and asks `newest()` once per step (a lock and an attribute read): the
training thread never waits on NATS. It also writes the job's description (`describe()`) to the jobs bucket, so
that the rebalancer knows the job's layout and settings without per-job configuration, and rank 0's
acknowledgements of plans (`acknowledge()`, plan_acks.py) to the plan acknowledgements bucket, so that the rebalancer
plans from what runs.

The thread polls the plans bucket every `poll_s` seconds rather than holding a KV watch: a poll is one request,
survives server restarts without re-subscribing, and a plan is announced several steps before it applies
(policy.DEFAULT_APPLY_MARGIN_STEPS), far longer than the polling period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from .buckets import ensure_jobs_bucket, put_description
from .connection import ConnectionOptions, connect
from .jobs import JobDescription
from .loop_thread import run_own_loop
from .messages import BadMessage, RebalancePlan
from .plan_ack_store import ensure_plan_acks_bucket, put_ack
from .plan_acks import PlanAck
from .streams import ensure_plans_bucket, latest_plan
from .subjects import token

logger = logging.getLogger(__name__)


class PlanWatcher:
    """`newest()` is the newest plan seen for (namespace, job), or None; `close()` stops the thread."""

    def __init__(self, options: ConnectionOptions, *, namespace: str, job: str, poll_s: float = 0.5) -> None:
        token(namespace)
        token(job)
        self._options, self._namespace, self._job, self._poll_s = options, namespace, job, poll_s
        self._lock = threading.Lock()
        self._newest: RebalancePlan | None = None
        self._description: JobDescription | None = None
        self._described = False
        self._ack: PlanAck | None = None
        """The newest acknowledgement not yet stored (a newer one replaces it: each carries the whole state)."""
        self.bad_plans = 0
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"nats-plans-{job}", daemon=True)
        self._thread.start()

    def newest(self) -> RebalancePlan | None:
        with self._lock:
            return self._newest

    def describe(self, description: JobDescription) -> None:
        """Store `description` in the jobs bucket (on the next poll; again after a server restart is not needed:
        the bucket is on disk)."""
        with self._lock:
            self._description, self._described = description, False

    def acknowledge(self, ack: PlanAck) -> None:
        """Store `ack` in the plan acknowledgements bucket (on the next poll; kept until stored)."""
        with self._lock:
            self._ack = ack

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self._poll_s + 3.0)

    def _run(self) -> None:
        run_own_loop(self._loop, self._main, "the plan watcher (plans are no longer followed)")

    async def _main(self) -> None:
        connecting = asyncio.create_task(connect(self._options))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            return
        client = connecting.result()
        try:
            kv: KeyValue | None = None
            while not self._stop.is_set():
                kv = await self._poll(client, kv)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._poll_s)
            with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):  # the last one, if the server answers
                await asyncio.wait_for(self._store_ack(client.jetstream(timeout=1.0)), 1.0)
        finally:
            with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                await asyncio.wait_for(client.close(), 1.0)

    async def _poll(self, client: Client, kv: KeyValue | None) -> KeyValue | None:
        """One look at the bucket; returns the bucket handle to reuse (None: look it up again next time)."""
        try:
            js = client.jetstream(timeout=2.0)
            await self._store_description(js)
            await self._store_ack(js)
            kv = kv or await ensure_plans_bucket(js)
            found = await latest_plan(kv, self._namespace, self._job)
        except BadMessage as exc:
            self.bad_plans += 1
            logger.warning("ignoring the stored plan of %s/%s: %s", self._namespace, self._job, exc)
            return kv
        except (nats.errors.Error, OSError, TimeoutError) as exc:  # the server is away: nats-py reconnects
            logger.debug("plan poll failed: %s", exc)
            return None
        if found is not None:
            plan = found[0]
            with self._lock:
                if self._newest is None or plan.epoch > self._newest.epoch:
                    self._newest = plan
        return kv

    async def _store_description(self, js: JetStreamContext) -> None:
        with self._lock:
            description = None if self._described else self._description
        if description is None:
            return
        await put_description(await ensure_jobs_bucket(js), description)
        with self._lock:
            self._described = self._description is description

    async def _store_ack(self, js: JetStreamContext) -> None:
        with self._lock:
            ack = self._ack
        if ack is None:
            return
        await put_ack(await ensure_plan_acks_bucket(js), ack)
        with self._lock:
            if self._ack is ack:
                self._ack = None
