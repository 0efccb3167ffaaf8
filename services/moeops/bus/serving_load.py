"""JetStream storage of the model servers' load: the KV bucket `moeops-serving-load` (see `serving_messages`).

Written by every server pod (`moeops.serving.load_reporter`), read by the operator's autoscaler
(`moeops.operator.handlers.autoscale`). Whoever comes first creates the bucket; an existing bucket is used as it is.
"""

from __future__ import annotations

import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from .messages import BadMessage
from .serving_messages import (
    SERVING_LOAD_BUCKET,
    SERVING_LOAD_TTL_S,
    ServerLoad,
    decode_load,
    encode_load,
    load_key,
    service_prefix,
)
from .streams import ensure_bucket

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 2.0
"""How long a read waits for the next entry of a service before it gives up (the server lists them at once)."""


async def ensure_serving_load_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Entries expire after SERVING_LOAD_TTL_S: a pod that stopped reporting drops out by itself."""
    description = "moeops: each model server pod's current load, for the autoscaler"
    return await ensure_bucket(js, SERVING_LOAD_BUCKET, description, replicas, ttl=SERVING_LOAD_TTL_S)


async def put_load(kv: KeyValue, load: ServerLoad) -> int:
    return await kv.put(load.key, encode_load(load))


async def delete_load(kv: KeyValue, namespace: str, service: str, pod: str) -> None:
    """Remove a pod's entry (a server shutting down): the autoscaler stops counting it at once, not after the TTL."""
    await kv.delete(load_key(namespace, service, pod))  # a delete marker: fine for a key never written


async def service_loads(kv: KeyValue, namespace: str, service: str) -> list[ServerLoad]:
    """The latest load of every pod of one InferenceService that still has an entry.

    An entry that does not decode is logged and skipped: one broken writer must not blind the autoscaler to the
    other pods. Raises nats errors (no server, a timeout) to the caller, which treats them as "no reading"."""
    watcher = await kv.watch(f"{service_prefix(namespace, service)}.*", ignore_deletes=True)
    loads: list[ServerLoad] = []
    try:
        # nats-py leaves the watcher untyped; updates() returns the next Entry, or None once the listing is done.
        while (entry := await watcher.updates(timeout=READ_TIMEOUT_S)) is not None:  # type: ignore[no-untyped-call]
            if not entry.value:
                continue
            try:
                load = decode_load(entry.value)
            except BadMessage as exc:
                logger.warning("load entry %s of %s/%s is unreadable: %s", entry.key, namespace, service, exc)
                continue
            if load.key != entry.key:  # a writer that names another pod or service: count nobody twice
                logger.warning("load entry %s holds the load of %s; skipped", entry.key, load.key)
                continue
            loads.append(load)
    finally:
        try:
            await watcher.stop()  # type: ignore[no-untyped-call]
        except nats.errors.Error as exc:  # the connection went meanwhile: the watch dies with it
            logger.debug("stopping the load watch of %s/%s: %s", namespace, service, exc)
    return loads
