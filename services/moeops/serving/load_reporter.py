"""The model server's side of autoscaling: its current load, written to NATS every couple of seconds.

How the server uses it (the server is async, so this is an asyncio task on the server's own loop, not a thread):

    reporter = LoadReporter.from_environment(service, namespace, sample=engine.load_sample)  # None without NATS
    # in the HTTP app's lifespan:
    if reporter: reporter.start()
    yield
    if reporter: await reporter.stop()

`sample()` is called on the loop every `interval_s` and must be cheap and non-blocking: it returns the counters the
server keeps anyway (requests in flight and queued, smoothed tokens/s and requests/s). The reporter turns them into
a `ServerLoad` and puts it under the pod's key of the `moeops-serving-load` bucket (`moeops.bus.serving_load`).

It never blocks or crashes the server: the connection is made inside the task (nats-py keeps retrying in the
background while no server answers), every put is bounded by a timeout, and any failure — no server, no JetStream,
a refused write, even an exception from `sample()` — is logged (once per kind until a put succeeds again) and the
next interval tries again. A load that is not written just ages: the bucket's TTL (30 s) drops a pod that stopped
reporting. `stop()` deletes the pod's key (the autoscaler stops counting a server that is shutting down at once)
and closes the connection, each bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import nats.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue
from pydantic import ValidationError

from moeops.api import env
from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.loop_thread import cancel_until_done
from moeops.bus.serving_load import delete_load, ensure_serving_load_bucket, put_load
from moeops.bus.serving_messages import ServerLoad
from moeops.bus.subjects import token

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0
STOP_TIMEOUT_S = 1.0
"""Each of deleting the key and closing the connection on stop(): a server shutting down must not wait on NATS."""


class LoadSample(NamedTuple):
    """What the server measures; the reporter adds who and when."""

    in_flight: int
    queued: int = 0
    tokens_per_second: float = 0.0
    requests_per_second: float = 0.0


class LoadReporter:
    """Puts this pod's load into the serving-load bucket every `interval_s`; see the module docstring."""

    def __init__(
        self,
        options: ConnectionOptions,
        namespace: str,
        service: str,
        pod: str,
        *,
        sample: Callable[[], LoadSample],
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name in (namespace, service, pod):
            token(name)  # a name that can't be a key fails here, at start-up, not at every put
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._options, self._namespace, self._service, self._pod = options, namespace, service, pod
        self._sample, self._interval_s, self._clock = sample, interval_s, clock
        self._task: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._kv: KeyValue | None = None
        self._failing: str | None = None
        """The kind of the last failure, logged once at warning level until a put succeeds again."""
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_environment(
        cls,
        service: str,
        namespace: str,
        *,
        sample: Callable[[], LoadSample],
        environ: Mapping[str, str] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> LoadReporter | None:
        """A reporter configured the way the operator sets up server pods (MOEOPS_NATS_* and MOEOPS_POD_NAME), or
        None when MOEOPS_NATS_URL is unset: without a bus the server serves as usual and the operator keeps the
        Deployment at its minimum (nothing reads load then)."""
        values = os.environ if environ is None else environ
        if not values.get(env.NATS_URL, "").strip():
            return None
        pod = values.get(env.POD_NAME, "").strip() or values.get("HOSTNAME", "").strip()
        if not pod:
            logger.warning("no %s or HOSTNAME: this server's load is not reported", env.POD_NAME)
            return None
        options = ConnectionOptions.from_env(values, name=f"moeops-server-{pod}")
        return cls(options, namespace, service, pod, sample=sample, interval_s=interval_s)

    def start(self) -> None:
        """Start reporting (call it on the server's running loop, e.g. in the app's lifespan)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"load-reporter-{self._pod}")

    async def stop(self) -> None:
        """Stop reporting, delete this pod's entry and close the connection, each bounded in time."""
        if self._task is not None:
            await cancel_until_done(self._task)
            self._task = None
        client, kv = self._client, self._kv
        self._client = self._kv = None
        if client is None:
            return
        if kv is not None and client.is_connected:
            try:
                await asyncio.wait_for(delete_load(kv, self._namespace, self._service, self._pod), STOP_TIMEOUT_S)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                logger.debug("could not delete the load entry of %s: %s", self._pod, exc)
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await asyncio.wait_for(client.close(), STOP_TIMEOUT_S)

    # --- the task -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while self._client is None:
            try:
                self._client = await connect(self._options)  # nats-py retries until a server answers
            except Exception as exc:  # e.g. a refused identity: keep the server serving, try again later
                self._failed(type(exc).__name__, str(exc))
                await asyncio.sleep(self._interval_s)
        while True:
            await self.report_once()
            await asyncio.sleep(self._interval_s)

    async def report_once(self) -> bool:
        """One sample and put; True when it was stored. Never raises (but for cancellation)."""
        client = self._client
        if client is None or not client.is_connected:
            return self._failed("NotConnected", "not connected to NATS")
        try:
            load = self._measure()
            if self._kv is None:
                js = client.jetstream(timeout=self._interval_s)
                self._kv = await asyncio.wait_for(ensure_serving_load_bucket(js), self._interval_s)
            await asyncio.wait_for(put_load(self._kv, load), self._interval_s)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self._kv = None  # look the bucket up again: it may have been deleted, or JetStream restarted
            return self._failed(type(exc).__name__, str(exc))
        except ValueError as exc:  # sample() returned figures ServerLoad refuses (negative, NaN)
            return self._failed("BadSample", str(exc))
        except Exception as exc:  # a bug in sample() or an unexpected client error must not end the reports
            logger.exception("reporting the load of %s failed", self._pod)
            return self._failed(type(exc).__name__, str(exc), logged=True)
        self.sent += 1
        if self._failing is not None:
            logger.info("load of %s reported again", self._pod)
            self._failing = None
        return True

    def _measure(self) -> ServerLoad:
        sample = self._sample()
        try:
            return ServerLoad(
                namespace=self._namespace,
                service=self._service,
                pod=self._pod,
                in_flight=sample.in_flight,
                queued=sample.queued,
                tokens_per_second=sample.tokens_per_second,
                requests_per_second=sample.requests_per_second,
                measured_at_unix_s=self._clock(),
            )
        except ValidationError as exc:
            raise ValueError(f"the server's load sample {sample!r} does not fit ServerLoad: {exc}") from None

    def _failed(self, kind: str, detail: str, *, logged: bool = False) -> bool:
        self.failed += 1
        if not logged:
            level = logging.DEBUG if self._failing == kind else logging.WARNING
            logger.log(level, "load of %s not reported: %s: %s", self._pod, kind, detail)
        self._failing = kind
        return False
