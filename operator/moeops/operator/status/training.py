"""MoETrainingJob status from its worker Job: conditions follow the Job (and through it, the pods)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec
from moeops.api.v1alpha1.trainingjob_status import PlanStatus, RebalanceStatus
from moeops.bus.reports import RebalanceReport

from ..planning import Plan
from ..planning.carbon_gate import PAUSED_CONDITION, is_carbon_paused
from ..planning.memory import GIB
from ..planning.recovery import Recovery, Verdict, counted_restarts, decide_recovery, job_failure, restarts
from .conditions import Event, EventType, StatusUpdate, set_condition, timestamp, transitions

EVENT_TYPES: dict[str, EventType] = {
    "Created": "Normal",
    "Running": "Normal",
    "Restarting": "Warning",
    "Suspended": "Normal",
    "Succeeded": "Normal",
    "Failed": "Warning",
}
# Order of precedence for the one-word `state`.
STATE_ORDER = ("Failed", "Succeeded", "Suspended", "Restarting", "Running", "Created")
FINISHED_STATES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class JobView:
    """What the operator needs from a batch/v1 Job, read defensively (any field may be absent)."""

    active: int
    ready: int
    succeeded: int
    failed: int
    suspended: bool
    finished_ok: Mapping[str, Any] | None
    start_time: str | None
    completion_time: str | None

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobView:
        status = job.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        # SuccessCriteriaMet comes first, Complete once every pod has terminated (failures: planning.recovery).
        return cls(
            active=int(status.get("active") or 0),
            ready=int(status.get("ready") or 0),
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            suspended="Suspended" in conds,
            finished_ok=conds.get("Complete") or conds.get("SuccessCriteriaMet"),
            start_time=status.get("startTime"),
            completion_time=status.get("completionTime"),
        )


def _state(conditions: Sequence[Mapping[str, Any]]) -> str:
    true = {c["type"] for c in conditions if c["status"] == "True"}
    return next((s for s in STATE_ORDER if s in true), "Pending")


def training_status(
    spec: MoETrainingJobSpec,
    job: Mapping[str, Any],
    previous: Mapping[str, Any],
    *,
    generation: int,
    now: datetime,
    recovery: Recovery | None = None,
) -> StatusUpdate:
    """The status patch for a job whose children exist; `previous` is the current `.status`.

    `recovery` is what `planning.recovery.decide_recovery` made of the Job (decided here without the failed pod
    when not given). A RESTART is recorded here: one more `.status.restarts`, Restarting with its reason.
    """
    if recovery is None:
        backoff_limit = spec.run_policy.backoff_limit
        recovery = decide_recovery(job, previous, backoff_limit=backoff_limit, failed_pod=None)
    view = JobView.of(job)
    desired = spec.workers.replicas
    before: list[dict[str, Any]] = list(previous.get("conditions") or [])

    def put(conds: list[dict[str, Any]], type_: str, on: bool, reason: str, message: str) -> list[dict[str, Any]]:
        return set_condition(conds, type_, on, reason, message, now=now, generation=generation)

    c = put(before, "Created", True, "ChildrenCreated", "ConfigMap, headless Service and worker Job created")
    failed = recovery.verdict is Verdict.FAIL
    restart = recovery.verdict is Verdict.RESTART
    succeeded = view.finished_ok is not None and not failed and not restart
    terminal = failed or succeeded
    c = put(c, "Failed", failed, *((recovery.reason, recovery.message) if failed else ("NotFailed", "")))
    c = put(c, "Succeeded", succeeded, "AllWorkersSucceeded" if succeeded else "NotSucceeded", "")

    user_suspended = spec.run_policy.suspend
    carbon_paused = is_carbon_paused(previous)
    suspended = not terminal and not restart and (view.suspended or user_suspended or carbon_paused)
    if suspended:
        reason = "SuspendedByUser" if user_suspended else "CarbonPaused" if carbon_paused else "WaitingForQueue"
        c = put(c, "Suspended", True, reason, _suspend_message(reason, before))
    else:
        was = any(x["type"] == "Suspended" and x["status"] == "True" for x in before)
        c = put(c, "Suspended", False, "Resumed" if was else "NotSuspended", "")

    all_ready = view.ready >= desired
    running = not terminal and not restart and not suspended and all_ready
    ready_msg = f"{view.ready}/{desired} workers ready"
    if terminal:
        c = put(c, "Running", False, "JobFinished", "")
    elif restart:
        c = put(c, "Running", False, "Restarting", recovery.message)
    elif suspended:
        c = put(c, "Running", False, "Suspended", "")
    else:
        c = put(c, "Running", running, "AllWorkersReady" if running else "WaitingForWorkers", ready_msg)

    restarts_before = restarts(previous)
    was_restarting = next((x for x in before if x["type"] == "Restarting" and x["status"] == "True"), None)
    if restart:
        c = put(c, "Restarting", True, recovery.reason, recovery.message)
    elif was_restarting and not (terminal or suspended or all_ready):  # the new attempt's workers are starting
        c = put(c, "Restarting", True, was_restarting["reason"], was_restarting["message"])
    else:
        c = put(c, "Restarting", False, "WorkersRecovered" if restarts_before else "NoFailures", "")

    patch: dict[str, Any] = {
        "state": _state(c),
        "conditions": c,
        "observedGeneration": generation,
        "workers": {
            "desired": desired,
            "active": view.active,
            "ready": view.ready,
            "succeeded": view.succeeded,
            "failed": view.failed,
        },
        "restarts": restarts_before + int(restart),
        "restartsCountTowardsMax": counted_restarts(previous) + int(restart and recovery.counted),
    }
    if view.start_time and not (restarts_before and previous.get("startTime")):
        patch["startTime"] = view.start_time  # the first attempt's: a restart does not start the job anew
    finished_at = view.completion_time or ((view.finished_ok if succeeded else job_failure(job)) or {}).get(
        "lastTransitionTime"
    )
    if terminal and finished_at:
        patch["completionTime"] = finished_at
    if succeeded:  # every worker exited 0 after the last step, whatever rank 0's last report on the bus said
        total = spec.training.steps
        patch["progress"] = {**(previous.get("progress") or {}), "step": total, "totalSteps": total, "percent": 100}
        patch["progress"].pop("etaSeconds", None)
    events = transitions(before, c, EVENT_TYPES)
    if restart and was_restarting:  # Restarting was already True: its transition posted no event for this one
        events.append(Event("Warning", recovery.reason, recovery.message))
    if any(x["type"] == "Suspended" and x["status"] == "True" for x in before) and not suspended and not terminal:
        events.append(Event("Normal", "Resumed", "workers resumed"))
    return StatusUpdate(patch, events)


def _suspend_message(reason: str, conditions: Sequence[Mapping[str, Any]]) -> str:
    """Why the workers stopped; a carbon pause adds the gate's own message (the intensity and threshold)."""
    gate = next((c for c in conditions if c.get("type") == PAUSED_CONDITION), {})
    detail = f": {gate.get('message')}" if reason == "CarbonPaused" and gate.get("message") else ""
    return f"workers stopped; state kept{detail}"


def invalid_spec_status(
    previous: Mapping[str, Any], reason: str, message: str, *, generation: int, now: datetime
) -> StatusUpdate:
    """A spec only the operator could reject: Failed with the reason, no children created."""
    before: list[dict[str, Any]] = list(previous.get("conditions") or [])
    c = set_condition(before, "Created", False, reason, message, now=now, generation=generation)
    c = set_condition(c, "Failed", True, reason, message, now=now, generation=generation)
    patch = {"state": "Failed", "conditions": c, "observedGeneration": generation, "completionTime": timestamp(now)}
    return StatusUpdate(patch, transitions(before, c, EVENT_TYPES))


def plan_status(plan: Plan) -> dict[str, Any]:
    """`.status.plan`: the degrees in force and the one-line reason."""
    return PlanStatus(
        **asdict(plan.degrees),
        memory_per_gpu_gib=round(plan.memory_per_gpu_bytes / GIB, 1),
        summary=plan.summary,
        reason=plan.reason,
    ).to_wire()


def rebalance_status(report: RebalanceReport) -> dict[str, Any]:
    """`.status.rebalance` from the rebalancer's latest report on the job."""
    return RebalanceStatus(
        epoch=report.plan_epoch,
        applied_at_step=report.apply_at_step,
        predicted_gain=None if report.predicted_gain is None else round(report.predicted_gain, 4),
        utilization=round(report.utilization, 4),
        ranks_reporting=report.ranks_reporting,
        last_step=report.last_step,
        last_update=datetime.fromtimestamp(report.measured_at_unix_s, tz=UTC),
        refused_epoch=report.refused_epoch,
        refusal=report.refusal,
    ).to_wire()


def ttl_expiry(status: Mapping[str, Any], ttl_seconds: int | None) -> datetime | None:
    """When a finished job with a TTL should be deleted; None if it isn't finished or has no TTL."""
    if ttl_seconds is None or status.get("state") not in FINISHED_STATES or not status.get("completionTime"):
        return None
    finished = datetime.fromisoformat(str(status["completionTime"]).replace("Z", "+00:00"))
    return finished + timedelta(seconds=ttl_seconds)


def is_finished(status: Mapping[str, Any]) -> bool:
    return status.get("state") in FINISHED_STATES
