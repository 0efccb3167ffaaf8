"""JetStream storage of the bus, set up idempotently by whoever starts first (rebalancer, operator, tests).

- Stream MOEOPS_METRICS holds `moeops.metrics.>` with limits retention: the last hour, at most
  `max_msgs_per_subject` steps per rank, oldest discarded first. A restarted rebalancer rebuilds its averages
  from it. Worker metrics carry no `Nats-Msg-Id` (publisher.py says why): a retried publish may be stored twice
  and the rebalancer drops the copy; the duplicate window still serves anything that does send one.
- KV bucket `moeops-plans` keeps the latest plan of each job (history 1) under `<namespace>.<job>`, and
  republishes every stored plan on `moeops.plans.<namespace>.<job>`: ranks can read the current plan when they
  start and follow new ones with a plain subscription.
- More KV buckets (buckets.py): the rebalancer's reports on jobs, and the jobs' descriptions of themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from .messages import RebalancePlan, decode, encode
from .subjects import METRICS_ROOT, METRICS_STREAM, PLANS_BUCKET, PLANS_KV_ROOT, PLANS_ROOT, plan_key, plans_subject

STREAM_NAME_IN_USE = 10058
"""JetStream's error code for creating a stream that exists with another configuration."""


@dataclass(frozen=True)
class MetricsRetention:
    max_age_s: float = 3600.0
    max_msgs_per_subject: int = 1000
    """Per rank: the recent steps a restarted rebalancer needs, not the whole run."""
    max_bytes: int = -1
    """-1: bounded by age and count only; set it where the server's disk is small."""
    duplicate_window_s: float = 120.0
    replicas: int = 1
    storage: StorageType = StorageType.FILE
    """On disk, so that the metrics outlive a server restart."""


StreamRetention = MetricsRetention
"""The same settings serve every limits-retention stream (the carbon stream: `moeops.carbon.accounting.store`)."""


def metrics_stream_config(retention: MetricsRetention | None = None) -> StreamConfig:
    return limits_stream_config(METRICS_STREAM, "moeops worker step metrics", METRICS_ROOT, retention)


def limits_stream_config(name: str, description: str, root: str, retention: StreamRetention | None) -> StreamConfig:
    """A stream of every subject under `root`, oldest messages discarded first past the retention limits."""
    retention = retention or StreamRetention()
    return StreamConfig(
        name=name,
        description=description,
        subjects=[f"{root}.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=retention.max_age_s,
        max_msgs_per_subject=retention.max_msgs_per_subject,
        max_bytes=retention.max_bytes,
        duplicate_window=retention.duplicate_window_s,
        num_replicas=retention.replicas,
        storage=retention.storage,
    )


async def ensure_metrics_stream(js: JetStreamContext, retention: MetricsRetention | None = None) -> StreamInfo:
    """Creates the metrics stream, or brings an existing one to this configuration."""
    return await ensure_stream(js, metrics_stream_config(retention))


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Creates the stream, or brings an existing one to this configuration."""
    try:
        return await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        return await js.update_stream(config)


async def ensure_bucket(js: JetStreamContext, bucket: str, description: str, replicas: int, **extra: Any) -> KeyValue:
    """KV bucket `bucket` (latest value per key, on disk), created if missing with `extra` settings (ttl,
    republish); an existing bucket is used as it is: another process may have created it first."""
    config = KeyValueConfig(
        bucket=bucket, description=description, history=1, replicas=replicas, storage=StorageType.FILE, **extra
    )
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        return await js.key_value(bucket)


async def ensure_plans_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The plans bucket (the latest plan per job, republished on the plans subjects)."""
    return await ensure_bucket(
        js,
        PLANS_BUCKET,
        "moeops: the latest rebalance plan of each job",
        replicas,
        republish=RePublish(src=f"{PLANS_KV_ROOT}.>", dest=f"{PLANS_ROOT}.>"),
    )


async def put_plan(kv: KeyValue, plan: RebalancePlan, *, last_revision: int | None = None) -> int:
    """Stores `plan` as its job's latest and returns the revision.

    With `last_revision` (0 for "no plan yet") the write succeeds only if the stored plan is still that revision
    (nats raises KeyWrongLastSequenceError otherwise), so two planners can't silently overwrite each other."""
    if last_revision is None:
        return await kv.put(plan.key, encode(plan))
    return await kv.update(plan.key, encode(plan), last=last_revision)


async def latest_plan(kv: KeyValue, namespace: str, job: str) -> tuple[RebalancePlan, int] | None:
    """The job's stored plan and its revision, or None if it has none; BadMessage if the stored bytes are bad."""
    try:
        entry = await kv.get(plan_key(namespace, job))
    except KeyNotFoundError:
        return None
    if entry.value is None or entry.revision is None:
        return None
    plan = decode(plans_subject(namespace, job), entry.value)
    assert isinstance(plan, RebalancePlan)  # decode picks the schema from the plans subject
    return plan, entry.revision
