"""What the operator's status loop (`status_loop.py`) copies from the bus into `.status`, one function per source.

Each source takes the object as kopf's index last saw it and returns the status fields it would write (the loop
patches those that differ, once per object). The figures' mapping is pure (`status/progress.py`, `status/carbon.py`,
`status.rebalance_status`); here is only the reading and the rules on when to read:

- progress (MoETrainingJob, every MOEOPS_PROGRESS_INTERVAL_S): rank 0's latest `JobProgress` from the
  `moeops-training-progress` bucket (key `<namespace>.<job>`, `moeops.bus.progress_putter`), and the newest complete
  checkpoint it names. A finished job is read once more, so that its last step shows, and then no more; a Succeeded
  job's step is never lowered (its status already says every step was done).
- rebalance (MoETrainingJob, every 15 s by default: MOEOPS_REBALANCE_STATUS_INTERVAL_S): the rebalancer's latest
  report; not for a finished job or one with `spec.rebalance.enabled: false`.
- workers (MoETrainingJob, every 10 s by default: MOEOPS_WORKERS_INTERVAL_S): what keeps the workers of an active job
  from starting (`status/blocked.py`: unschedulable pods, image and container-config errors, the Job's FailedCreate),
  read only for a job whose workers are not all ready BLOCKED_AFTER_S after it was created (a list of its pods; of the
  Job's events when it has no pod), or that is shown blocked (to clear it).
- storage (MoETrainingJob, as often as workers): whether the checkpoint claim (`spec.checkpoint.storage.claimName`)
  exists, has its volume, and is ReadWriteMany when the workers run on several nodes (`status/storage.py`); read only
  for a job that names a claim and is not Running yet (or is shown blocked, to clear it): a running job has mounted
  it.
- carbon (both kinds, every 30 s by default: MOEOPS_CARBON_STATUS_INTERVAL_S): the carbon aggregator's totals
  (`workload.<namespace>.<kind>.<name>` in the `moeops-carbon` bucket); not with `spec.carbon.enabled: false`, nor for
  a job finished more than SETTLE_S ago (the last deltas of its pods reach the ledger within seconds of the pods
  ending).

Why the operator writes these and not the services: least privilege (they need NATS only, no Kubernetes client, no
RBAC) and one writer of `.status`. Failures (no NATS, no bucket, a malformed value) are logged by the reader or
here and leave the status as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from moeops.api.v1alpha1 import inferenceservice, trainingjob
from moeops.bus.buckets import ensure_progress_bucket, latest_progress
from moeops.carbon.accounting.store import ensure_carbon_bucket, workload_carbon

from ..config import OperatorConfig
from ..grid_intensity import GridIntensity
from ..kube import Kube
from ..naming import RESTART_ATTEMPT_LABEL, TRAINING_JOB_LABEL, worker_job_name
from ..planning.autoscale import State
from ..reports import ReportReader
from ..status import StatusUpdate, is_finished, rebalance_status
from ..status.blocked import CONDITION as BLOCKED
from ..status.blocked import blocked_status, job_problem, pod_problem
from ..status.carbon import carbon_reported, carbon_status
from ..status.progress import checkpoint_status, progress_status
from ..status.storage import CONDITION as STORAGE_BLOCKED
from ..status.storage import claim_problem, storage_status
from .common import now
from .observe import JOBS

logger = logging.getLogger(__name__)

Fields = StatusUpdate | None
"""What a source makes of one object: status fields (and the events their change deserves), or None."""
BLOCKED_AFTER_S = 20.0
"""Workers not ready this long after the job's children were created are looked at (pulls and scheduling take a
while; a burst of new jobs must not cost a pod list each)."""
SETTLE_S = 600.0
"""How long after a job finished its carbon totals are still read."""
KINDS = {trainingjob.PLURAL: trainingjob.KIND, inferenceservice.PLURAL: inferenceservice.KIND}


@dataclass
class Context:
    """What the sources share: the clients, and the little state kept between passes (by object uid)."""

    reader: ReportReader | None
    kube: Kube
    cfg: OperatorConfig
    grid: GridIntensity | None = None
    """The carbon gate's intensity source (`carbon_gate.py`)."""
    final_progress_read: set[str] = field(default_factory=set)
    """Finished jobs whose progress was read once more (and is read no more)."""
    autoscale_states: dict[str, State] = field(default_factory=dict)
    """Each InferenceService's autoscaler window and idle timer (`planning.autoscale.State`)."""

    def forget(self, live_uids: set[str]) -> None:
        """Drop the state of objects that are gone."""
        self.final_progress_read &= live_uids
        for uid in set(self.autoscale_states) - live_uids:
            del self.autoscale_states[uid]


SourceFn = Callable[[Context, Mapping[str, Any]], Awaitable[Fields]]


def _names(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(meta.get("uid") or "")


def created_unix_s(meta: Mapping[str, Any]) -> float | None:
    created = meta.get("creationTimestamp")
    return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp() if created else None


async def progress_fields(ctx: Context, body: Mapping[str, Any]) -> Fields:
    namespace, name, uid = _names(body)
    if ctx.reader is None or uid in ctx.final_progress_read:
        return None
    status = body.get("status") or {}
    finished = is_finished(status)
    progress = await ctx.reader.read(
        ensure_progress_bucket,
        lambda kv: latest_progress(kv, namespace, name),
        f"progress of MoETrainingJob {namespace}/{name}",
    )
    if finished:
        ctx.final_progress_read.add(uid)
    if progress is None:
        return None
    fresh = progress_status(progress, job_created_unix_s=created_unix_s(body["metadata"]))
    if fresh is None:
        return None
    before = dict(status.get("progress") or {})
    if finished and fresh["step"] < before.get("step", 0):
        fresh = before  # a Succeeded job's status already says every step was done
    JOBS.record(namespace, name, {"progress": fresh})
    out: dict[str, Any] = {"progress": fresh}
    storage = ((body.get("spec") or {}).get("checkpoint") or {}).get("storage") or {}
    checkpoint = checkpoint_status(progress, storage)
    if checkpoint is not None:
        out["checkpoint"] = checkpoint
    return StatusUpdate(out)


async def rebalance_fields(ctx: Context, body: Mapping[str, Any]) -> Fields:
    namespace, name, _ = _names(body)
    spec = body.get("spec") or {}
    if ctx.reader is None or is_finished(body.get("status") or {}):
        return None
    if not (spec.get("rebalance") or {}).get("enabled", True):
        return None
    report = await ctx.reader.report(namespace, name)
    if report is None:
        return None
    fresh = rebalance_status(report)
    JOBS.record(namespace, name, {"rebalance": fresh})
    return StatusUpdate({"rebalance": fresh})


def settled(status: Mapping[str, Any], at: datetime) -> bool:
    """A finished job whose last energy has long been counted."""
    completed = status.get("completionTime")
    if not is_finished(status) or not completed:
        return False
    finished = datetime.fromisoformat(str(completed).replace("Z", "+00:00"))
    return at - finished > timedelta(seconds=SETTLE_S)


async def carbon_fields(ctx: Context, body: Mapping[str, Any]) -> Fields:
    namespace, name, _ = _names(body)
    kind = str(body.get("kind") or "")
    status = body.get("status") or {}
    if ctx.reader is None or kind not in KINDS.values():
        return None
    if not carbon_reported(body.get("spec") or {}) or settled(status, now()):
        return None
    totals = await ctx.reader.read(
        ensure_carbon_bucket,
        lambda kv: workload_carbon(kv, namespace, kind, name),
        f"carbon totals of {kind} {namespace}/{name}",
    )
    if totals is None:
        return None
    try:
        return StatusUpdate({"carbon": carbon_status(totals)})
    except (ValidationError, ValueError) as exc:  # a figure the schema refuses: log, keep the old status
        logger.warning("carbon totals of %s %s/%s do not fit the status: %s", kind, namespace, name, exc)
        return None


def _since(conditions: list[dict[str, Any]], type_: str, at: datetime) -> float:
    """Seconds since the condition's last transition (0 when it is absent)."""
    cond = next((c for c in conditions if c.get("type") == type_), None)
    if not cond or not cond.get("lastTransitionTime"):
        return 0.0
    since = datetime.fromisoformat(str(cond["lastTransitionTime"]).replace("Z", "+00:00"))
    return (at - since).total_seconds()


async def workers_fields(ctx: Context, body: Mapping[str, Any]) -> Fields:
    namespace, name, _ = _names(body)
    status = body.get("status") or {}
    conditions = list(status.get("conditions") or [])
    shown = any(c.get("type") == BLOCKED and c.get("status") == "True" for c in conditions)
    workers = status.get("workers") or {}
    at = now()
    waiting = int(workers.get("ready") or 0) < int(workers.get("desired") or 0) and status.get("state") in (
        "Created", "Restarting", "Pending")  # fmt: skip
    if is_finished(status) or not (shown or (waiting and _since(conditions, "Created", at) >= BLOCKED_AFTER_S)):
        return None
    attempt = int(status.get("restarts") or 0)
    selector = f"{TRAINING_JOB_LABEL}={name},{RESTART_ATTEMPT_LABEL}={attempt}"
    pods = await asyncio.to_thread(ctx.kube.list_pods, namespace, selector)
    problems = sorted(p for p in map(pod_problem, pods) if p is not None)
    problem = problems[0] if problems else None
    if problem is None and not pods and waiting:  # no pod at all: did the Job controller fail to create them?
        events = await asyncio.to_thread(ctx.kube.list_events, namespace, "Job", worker_job_name(name))
        problem = job_problem(events)
    generation = int(body["metadata"].get("generation") or 0)
    return blocked_status(status, problem, generation=generation, now=at)


async def storage_fields(ctx: Context, body: Mapping[str, Any]) -> Fields:
    namespace, _, _ = _names(body)
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    claim_name = ((spec.get("checkpoint") or {}).get("storage") or {}).get("claimName")
    conditions = list(status.get("conditions") or [])
    shown = any(c.get("type") == STORAGE_BLOCKED and c.get("status") == "True" for c in conditions)
    if not claim_name or is_finished(status) or (status.get("state") == "Running" and not shown):
        return None
    claim = await asyncio.to_thread(ctx.kube.get, "v1", "PersistentVolumeClaim", namespace, claim_name)
    workers = int((spec.get("workers") or {}).get("replicas") or 1)
    problem = claim_problem(claim_name, claim, workers=workers)
    generation = int(body["metadata"].get("generation") or 0)
    return storage_status(status, problem, generation=generation, now=now())
