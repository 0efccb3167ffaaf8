"""JetStream storage of carbon accounting: the energy stream and the aggregator's KV bucket.

- Stream MOEOPS_CARBON holds `moeops.carbon.energy.>` and nothing else (the aggregator reads every message of it
  in stream order and takes a gap in the sequence for a lost delivery: see `moeops.carbon.accounting.aggregator`).
  Limits retention on disk for a week: a restarted aggregator replays from its last checkpoint, so the stream needs to
  keep only what a stopped aggregator could still want; a week covers a long weekend without one.
- Duplicate window: one hour. A resend of a delta JetStream already stored happens when the agent lost the ack,
  or crashed between the store and recording the ack in its spool: the resend follows as soon as the agent
  reaches the server again, so the window must span the longest outage during which the agent waits with an
  unacknowledged publish. An hour covers a server restart, a rolling upgrade or a partition of that length; the
  server holds one id per message of the window (about 100 bytes each: a 1,000-node cluster sending a delta a
  second per GPU keeps a few hundred MB for an hour, so shorten it on such a cluster). A resend beyond the window
  is stored twice but counted once: the ledger's per-meter high-water marks drop it.
- KV bucket `moeops-carbon`: the ledger checkpoint under `ledger` and one key per workload with its totals
  (`workload.<namespace>.<kind>.<name>`), which the operator reads into `.status.carbon`.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import StreamInfo
from nats.js.kv import KeyValue

from moeops.bus.buckets import stored_value
from moeops.bus.streams import StreamRetention, ensure_bucket, ensure_stream, limits_stream_config
from moeops.bus.subjects import CARBON_BUCKET, CARBON_ENERGY_ROOT, CARBON_LEDGER_KEY, CARBON_STREAM, carbon_workload_key
from moeops.carbon.accounting.messages import (
    LedgerCheckpoint,
    WorkloadCarbon,
    decode_checkpoint,
    decode_workload,
    encode_carbon,
)

WEEK_S = 7 * 24 * 3600.0

CARBON_RETENTION = StreamRetention(max_age_s=WEEK_S, max_msgs_per_subject=-1, duplicate_window_s=3600.0)
"""See the module docstring; no per-subject cap: every delta of a node counts."""


async def ensure_carbon_stream(js: JetStreamContext, retention: StreamRetention | None = None) -> StreamInfo:
    config = limits_stream_config(
        CARBON_STREAM, "moeops energy deltas from the node agents", CARBON_ENERGY_ROOT, retention or CARBON_RETENTION
    )
    return await ensure_stream(js, config)


async def ensure_carbon_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await ensure_bucket(js, CARBON_BUCKET, "moeops: carbon ledger checkpoint and workload totals", replicas)


async def load_checkpoint(kv: KeyValue) -> LedgerCheckpoint | None:
    """The stored checkpoint, or None if there is none; BadMessage if its bytes are bad."""
    value = await stored_value(kv, CARBON_LEDGER_KEY)
    return decode_checkpoint(value) if value else None


async def save_checkpoint(kv: KeyValue, checkpoint: LedgerCheckpoint) -> int:
    return await kv.put(CARBON_LEDGER_KEY, encode_carbon(checkpoint))


async def put_workload(kv: KeyValue, totals: WorkloadCarbon) -> int:
    return await kv.put(totals.key, encode_carbon(totals))


async def workload_carbon(kv: KeyValue, namespace: str, kind: str, name: str) -> WorkloadCarbon | None:
    """A workload's totals, or None if nothing was charged to it; BadMessage if the stored bytes are bad."""
    value = await stored_value(kv, carbon_workload_key(namespace, kind, name))
    return decode_workload(value) if value else None
