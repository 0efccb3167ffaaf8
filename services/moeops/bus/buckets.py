"""The KV buckets beside the plans: the rebalancer's reports on jobs (read by the operator), the jobs'
descriptions of themselves (read by the rebalancer) and their progress (written by rank 0, read by the operator).
Latest value per job, key `<namespace>.<job>`."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from .jobs import JOBS_BUCKET, JobDescription, decode_description, job_key
from .progress import PROGRESS_BUCKET, PROGRESS_TTL_S, JobProgress, decode_progress, encode_progress, progress_key
from .reports import REPORT_MAX_AGE_S, REPORTS_BUCKET, RebalanceReport, decode_report, report_key
from .streams import ensure_bucket


async def ensure_reports_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Reports expire after REPORT_MAX_AGE_S: a job that stopped drops out of the bucket by itself."""
    description = "moeops: the rebalancer's latest report on each job"
    return await ensure_bucket(js, REPORTS_BUCKET, description, replicas, ttl=REPORT_MAX_AGE_S)


async def put_report(kv: KeyValue, report: RebalanceReport) -> int:
    return await kv.put(report.key, report.model_dump_json().encode())


async def latest_report(kv: KeyValue, namespace: str, job: str) -> RebalanceReport | None:
    """The job's report, or None if there is none (or it expired); BadMessage if the stored bytes are bad."""
    value = await stored_value(kv, report_key(namespace, job))
    return decode_report(value) if value else None


async def ensure_jobs_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    description = "moeops: each training job's layout and rebalancing settings, written by its rank 0"
    return await ensure_bucket(js, JOBS_BUCKET, description, replicas)


async def put_description(kv: KeyValue, description: JobDescription) -> int:
    return await kv.put(description.key, description.model_dump_json().encode())


async def job_description(kv: KeyValue, namespace: str, job: str) -> JobDescription | None:
    """The job's description, or None; BadMessage if the stored bytes are bad."""
    value = await stored_value(kv, job_key(namespace, job))
    return decode_description(value) if value else None


async def ensure_progress_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Entries expire after PROGRESS_TTL_S: a job that stopped drops out of the bucket by itself. Whoever comes
    first (a job's rank 0 or the operator) creates it."""
    description = "moeops: each training job's progress (step, loss, tokens/s), written by its rank 0"
    return await ensure_bucket(js, PROGRESS_BUCKET, description, replicas, ttl=PROGRESS_TTL_S)


async def put_progress(kv: KeyValue, progress: JobProgress) -> int:
    return await kv.put(progress.key, encode_progress(progress))


async def latest_progress(kv: KeyValue, namespace: str, job: str) -> JobProgress | None:
    """The job's progress, or None if there is none (or it expired); BadMessage if the stored bytes are bad."""
    value = await stored_value(kv, progress_key(namespace, job))
    return decode_progress(value) if value else None


async def stored_value(kv: KeyValue, key: str) -> bytes | None:
    """The bytes under `key`, or None when there are none (shared with `moeops.carbon.accounting.store`)."""
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError):  # never written, deleted, or expired
        return None
    return entry.value
