"""Pure status computation: Job (and Deployment) states in, conditions, counters and events out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from moeops.api.v1alpha1 import MoETrainingJobSpec
from moeops.operator.status import invalid_spec_status, serving_status, set_condition, training_status, ttl_expiry

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = MoETrainingJobSpec.model_validate(
    {
        "model": {"preset": "moe-debug"},
        "data": {"source": "synthetic://x"},
        "training": {"steps": 10},
        "workers": {"replicas": 2},
        "runPolicy": {"backoffLimit": 1},
    }
)


def job(**status: Any) -> dict[str, Any]:
    conditions = status.pop("conditions", [])
    return {"status": {**status, "conditions": [{"type": t, "status": "True", "reason": r, "message": m,
                                                 "lastTransitionTime": "2026-01-01T00:05:00Z"}
                                                for t, r, m in conditions]}}  # fmt: skip


def conds(update) -> dict[str, str]:
    return {c["type"]: c["status"] for c in update.patch["conditions"]}


def test_pending_workers_are_created_not_running() -> None:
    update = training_status(SPEC, job(active=2), {}, generation=1, now=T0)
    assert update.patch["state"] == "Created"
    assert conds(update) == {
        "Created": "True", "Failed": "False", "Succeeded": "False",
        "Suspended": "False", "Running": "False", "Restarting": "False",
    }  # fmt: skip
    assert [e.reason for e in update.events] == ["ChildrenCreated"]


def test_all_workers_ready_is_running() -> None:
    before = training_status(SPEC, job(active=2), {}, generation=1, now=T0).patch
    update = training_status(SPEC, job(active=2, ready=2), before, generation=1, now=T0 + timedelta(seconds=5))
    assert update.patch["state"] == "Running"
    assert [e.reason for e in update.events] == ["AllWorkersReady"]
    created = next(c for c in update.patch["conditions"] if c["type"] == "Created")
    assert created["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # unchanged status keeps its time


def test_a_worker_short_of_ready_is_waiting_not_restarting() -> None:
    # backoffLimit 0: a Job with a failure has failed; one that has not is just waiting for its workers.
    update = training_status(SPEC, job(active=2, ready=1), {}, generation=1, now=T0)
    assert update.patch["state"] == "Created" and conds(update)["Restarting"] == "False"
    running = next(c for c in update.patch["conditions"] if c["type"] == "Running")
    assert (running["reason"], running["message"]) == ("WaitingForWorkers", "1/2 workers ready")


def test_a_final_job_failure_is_failed_with_the_job_reason() -> None:
    update = training_status(
        SPEC, job(failed=1, conditions=[("FailureTarget", "DeadlineExceeded", "too long")]), {},
        generation=1, now=T0,
    )  # fmt: skip
    failed = next(c for c in update.patch["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == ("True", "DeadlineExceeded", "too long")
    assert update.patch["state"] == "Failed" and update.patch["completionTime"] == "2026-01-01T00:05:00Z"
    assert conds(update)["Running"] == "False" and conds(update)["Restarting"] == "False"
    assert update.patch["restarts"] == 0


def test_success_criteria_met_is_succeeded() -> None:
    update = training_status(
        SPEC, job(succeeded=2, conditions=[("SuccessCriteriaMet", "x", "")]), {}, generation=1, now=T0
    )
    assert update.patch["state"] == "Succeeded" and update.patch["workers"]["succeeded"] == 2


def test_a_succeeded_job_shows_every_step_done_whatever_the_last_report_said() -> None:
    """Rank 0's last progress put may not reach the bus before its pod ends; success itself says all steps ran."""
    previous = {"progress": {"step": 1487, "totalSteps": SPEC.training.steps, "percent": 99, "loss": 0.11,
                             "etaSeconds": 4}}  # fmt: skip
    done = job(succeeded=2, conditions=[("SuccessCriteriaMet", "x", "")])
    progress = training_status(SPEC, done, previous, generation=1, now=T0).patch["progress"]
    assert progress == {"step": SPEC.training.steps, "totalSteps": SPEC.training.steps, "percent": 100, "loss": 0.11}
    running = training_status(SPEC, job(active=2), previous, generation=1, now=T0).patch
    assert "progress" not in running  # while it runs, progress is the workers' to report


def test_suspension_by_user_and_by_queue() -> None:
    spec = SPEC.model_copy(update={"run_policy": SPEC.run_policy.model_copy(update={"suspend": True})})
    update = training_status(spec, job(conditions=[("Suspended", "JobSuspended", "")]), {}, generation=2, now=T0)
    suspended = next(c for c in update.patch["conditions"] if c["type"] == "Suspended")
    assert suspended["reason"] == "SuspendedByUser" and update.patch["state"] == "Suspended"
    queued = training_status(SPEC, job(conditions=[("Suspended", "JobSuspended", "")]), {}, generation=1, now=T0)
    assert next(c for c in queued.patch["conditions"] if c["type"] == "Suspended")["reason"] == "WaitingForQueue"
    resumed = training_status(SPEC, job(active=2), update.patch, generation=3, now=T0)
    assert "Resumed" in [e.reason for e in resumed.events]


def test_invalid_spec_is_failed_without_children() -> None:
    update = invalid_spec_status({}, "PlanInfeasible", "does not fit", generation=1, now=T0)
    assert update.patch["state"] == "Failed"
    assert conds(update) == {"Created": "False", "Failed": "True"}
    assert [(e.type, e.reason) for e in update.events] == [("Warning", "PlanInfeasible")]


def test_ttl_expiry_only_for_finished_jobs_with_a_ttl() -> None:
    finished = {"state": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"}
    assert ttl_expiry(finished, 30) == T0 + timedelta(seconds=30)
    assert ttl_expiry(finished, None) is None
    assert ttl_expiry({"state": "Running"}, 30) is None


def test_set_condition_replaces_in_place() -> None:
    first = set_condition([], "Ready", False, "Waiting", "", now=T0, generation=1)
    second = set_condition(first, "Ready", True, "Up", "", now=T0 + timedelta(1), generation=2)
    assert len(second) == 1 and second[0]["status"] == "True" and second[0]["observedGeneration"] == 2
    assert second[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]


def test_serving_readiness_and_stop() -> None:
    deployment = {"status": {"replicas": 2, "readyReplicas": 1}}
    ready = serving_status(deployment, {}, stopped=False, url="u", model="m", not_ready=None, generation=1, now=T0)
    assert {c["type"]: c["status"] for c in ready.patch["conditions"]} == {"Ready": "True", "Stopped": "False"}
    stopped = serving_status(
        deployment, ready.patch, stopped=True, url="u", model="m", not_ready=None, generation=1, now=T0
    )
    assert {c["type"]: c["status"] for c in stopped.patch["conditions"]} == {"Ready": "False", "Stopped": "True"}
    assert [e.reason for e in stopped.events] == ["StopAnnotation"]
    waiting = serving_status(None, {}, stopped=False, url=None, model=None, not_ready=("ModelNotReady", "later"),
                             generation=1, now=T0)  # fmt: skip
    assert waiting.patch["conditions"][0]["reason"] == "ModelNotReady"
