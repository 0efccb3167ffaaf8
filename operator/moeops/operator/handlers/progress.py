"""MoETrainingJob `.status.progress`: rank 0's latest progress (step, loss, tokens/s, ETA), copied in from the bus.

Rank 0 of every job puts a `JobProgress` at most every 2 s, and after its last step, into the KV bucket
`moeops-training-progress` (key `<namespace>.<job>`, entries expire after 5 min; `moeops.bus.progress_putter`). A
timer per job reads it every MOEOPS_PROGRESS_INTERVAL_S (5 s by default; read when the handlers are imported, as kopf
fixes a timer's interval then) and patches `.status.progress` when the rounded figures changed (the pure mapping:
`status.progress`). A finished job is read once more, so that its last step shows, and then no more.

A timer per job rather than a watch on the bucket, as for `.status.rebalance`: one KV read per job per interval is
cheap, and a slower figure costs nothing. Without a bus (no MOEOPS_NATS_URL) the timer does nothing and the progress
stays at step 0 as the reconcile initialised it; a failed read (no server, no bucket yet, a malformed entry) is
logged by the reader and leaves the status as it is.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import kopf

from moeops.bus.buckets import ensure_progress_bucket, latest_progress

from ..bus_reader import BusReader
from ..config import OperatorConfig
from ..status import is_finished
from ..status.progress import checkpoint_status, progress_status
from .observe import JOBS, traced
from .training import TRAINING

PROGRESS_INTERVAL_S = OperatorConfig.from_env(os.environ).progress_interval_s
FINAL_READ_DONE = "progress_final_read_done"
"""The memo key (kopf gives each object a memo of its own) saying a finished job's progress was read once more."""


def created_unix_s(meta: kopf.Meta) -> float | None:
    created = meta.get("creationTimestamp")
    return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp() if created else None


@kopf.timer(*TRAINING, interval=PROGRESS_INTERVAL_S, initial_delay=PROGRESS_INTERVAL_S)
@traced()
async def copy_job_progress(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    reader: BusReader | None = memo.get("bus")
    if reader is None or namespace is None or memo.get(FINAL_READ_DONE):
        return
    finished = is_finished(dict(status))
    progress = await reader.read(
        ensure_progress_bucket,
        lambda kv: latest_progress(kv, namespace, name),
        f"progress of MoETrainingJob {namespace}/{name}",
    )
    if finished:
        memo[FINAL_READ_DONE] = True
    fresh = None if progress is None else progress_status(progress, job_created_unix_s=created_unix_s(meta))
    if fresh is None:
        return
    if finished and fresh["step"] < (status.get("progress") or {}).get("step", 0):
        fresh = dict(status.get("progress") or {})  # a Succeeded job's status already says every step was done
    JOBS.record(namespace, name, {"progress": fresh})
    if fresh != dict(status.get("progress") or {}):
        patch.status["progress"] = fresh
    assert progress is not None
    checkpoint = checkpoint_status(progress, (spec.get("checkpoint") or {}).get("storage") or {})
    if checkpoint is not None and checkpoint != dict(status.get("checkpoint") or {}):
        patch.status["checkpoint"] = checkpoint
