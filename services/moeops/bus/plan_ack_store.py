"""The plan acknowledgements' KV bucket (plan_acks.py says what they hold): rank 0 puts, the rebalancer reads."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from .buckets import stored_value
from .plan_acks import PLAN_ACK_TTL_S, PLAN_ACKS_BUCKET, PlanAck, decode_ack, encode_ack, plan_ack_key
from .streams import ensure_bucket


async def ensure_plan_acks_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Whoever comes first (a job's rank 0 or the rebalancer) creates it."""
    description = "moeops: each training job's latest acknowledgement of a rebalance plan, written by its rank 0"
    return await ensure_bucket(js, PLAN_ACKS_BUCKET, description, replicas, ttl=PLAN_ACK_TTL_S)


async def put_ack(kv: KeyValue, ack: PlanAck) -> int:
    return await kv.put(ack.key, encode_ack(ack))


async def latest_ack(kv: KeyValue, namespace: str, job: str) -> PlanAck | None:
    """The job's latest acknowledgement, or None; BadMessage if the stored bytes are bad."""
    value = await stored_value(kv, plan_ack_key(namespace, job))
    return decode_ack(value) if value else None
