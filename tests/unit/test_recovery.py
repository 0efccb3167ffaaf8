"""Group restarts of a training job's workers, the pure half: the decision on a failed worker Job, the pod that
failed first, the status a restart writes, and the children of a later attempt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from moeops.api.v1alpha1 import MoETrainingJobSpec
from moeops.operator.children.training import training_children
from moeops.operator.config import OperatorConfig
from moeops.operator.naming import Owner
from moeops.operator.planning import plan_training_job
from moeops.operator.planning.recovery import (
    Verdict,
    WorkerFailure,
    decide_recovery,
    first_failed_pod,
    needs_failed_pod,
    remaining_deadline_s,
)
from moeops.operator.status import training_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ATTEMPT = "moeops.dev/restart-attempt"
SPEC = MoETrainingJobSpec.model_validate(
    {
        "model": {"preset": "moe-debug"},
        "data": {"source": "synthetic://x"},
        "training": {"steps": 10},
        "workers": {"replicas": 2},
        "runPolicy": {"backoffLimit": 2},
    }
)
CRASH = WorkerFailure(pod="tj-1-x7k2p", rank="1", exit_code=1, disrupted=False, detail="Error")
EVICTED = WorkerFailure(pod="tj-0-abcde", rank="0", exit_code=143, disrupted=True, detail="EvictionByEvictionAPI")


def job(attempt: int = 0, *, failure: str | None = None, message: str = "", **counts: Any) -> dict[str, Any]:
    """A worker Job of `attempt`; `failure` is the reason of its FailureTarget condition."""
    conditions = [{"type": "FailureTarget", "status": "True", "reason": failure, "message": message,
                   "lastTransitionTime": "2026-01-01T00:05:00Z"}] if failure else []  # fmt: skip
    return {
        "metadata": {"name": "tj", "namespace": "ml", "uid": "job-uid", "labels": {ATTEMPT: str(attempt)}},
        "status": {**counts, "conditions": conditions},
    }


def status(restarts: int = 0, counted: int = 0, **more: Any) -> dict[str, Any]:
    return {"restarts": restarts, "restartsCountTowardsMax": counted, **more}


def test_a_job_that_has_not_failed_is_followed() -> None:
    decision = decide_recovery(job(active=2), status(), backoff_limit=2, failed_pod=None)
    assert decision.verdict is Verdict.FOLLOW
    assert not needs_failed_pod(job(active=2), status())


def test_a_worker_failure_restarts_the_group_and_counts_it() -> None:
    failed = job(failure="BackoffLimitExceeded", failed=1)
    assert needs_failed_pod(failed, status())
    decision = decide_recovery(failed, status(), backoff_limit=2, failed_pod=CRASH)
    assert (decision.verdict, decision.reason, decision.counted) == (Verdict.RESTART, "WorkerFailed", True)
    assert "worker 1 (pod tj-1-x7k2p) exited with code 1" in decision.message
    assert "restart 1 of 2" in decision.message and "last checkpoint" in decision.message


def test_restarts_exhausted_fail_the_job_with_the_reason() -> None:
    failed = job(2, failure="BackoffLimitExceeded")
    decision = decide_recovery(failed, status(2, 2), backoff_limit=2, failed_pod=CRASH)
    assert (decision.verdict, decision.reason) == (Verdict.FAIL, "BackoffLimitExceeded")
    assert "exited with code 1" in decision.message and "backoffLimit (2) reached: 2 restart(s)" in decision.message


def test_the_message_says_when_the_restart_starts_over() -> None:
    failed = job(failure="BackoffLimitExceeded")
    decision = decide_recovery(failed, status(), backoff_limit=2, failed_pod=CRASH, durable_checkpoints=False)
    assert decision.verdict is Verdict.RESTART and "from step 0 (checkpoints on ephemeral disk" in decision.message


def test_a_raised_backoff_limit_allows_another_restart() -> None:
    failed = job(2, failure="BackoffLimitExceeded")
    assert decide_recovery(failed, status(2, 2), backoff_limit=3, failed_pod=CRASH).verdict is Verdict.RESTART


def test_a_disruption_restarts_without_counting_even_past_the_limit() -> None:
    failed = job(2, failure="BackoffLimitExceeded")
    decision = decide_recovery(failed, status(2, 2), backoff_limit=2, failed_pod=EVICTED)
    assert (decision.verdict, decision.reason, decision.counted) == (Verdict.RESTART, "WorkerDisrupted", False)
    assert "was disrupted (EvictionByEvictionAPI)" in decision.message


def test_a_configuration_error_and_the_deadline_are_final() -> None:
    rule = "Container trainer for pod ml/tj-0-abcde failed with exit code 78 matching FailJob rule at index 0"
    for reason, message in (("PodFailurePolicy", rule), ("DeadlineExceeded", "Job was active longer than")):
        failed = job(failure=reason, message=message)
        assert not needs_failed_pod(failed, status())
        decision = decide_recovery(failed, status(), backoff_limit=5, failed_pod=None)
        assert (decision.verdict, decision.reason, decision.message) == (Verdict.FAIL, reason, message)


def test_a_job_of_an_earlier_attempt_is_stale_whatever_its_state() -> None:
    for old in (job(0, failure="BackoffLimitExceeded"), job(0, active=2), job(1, failure="DeadlineExceeded")):
        decision = decide_recovery(old, status(2, 1), backoff_limit=2, failed_pod=None)
        assert decision.verdict is Verdict.STALE
    assert not needs_failed_pod(job(0, failure="BackoffLimitExceeded"), status(1, 1))
    unlabelled = {"metadata": {"name": "tj"}, "status": {"active": 2}}  # made before restarts existed: attempt 0
    assert decide_recovery(unlabelled, status(), backoff_limit=2, failed_pod=None).verdict is Verdict.FOLLOW


def pod(name: str, index: int, exit_code: int | None, finished: str, **extra: Any) -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "reason": "Error", "finishedAt": finished}
    return {
        "metadata": {
            "name": name,
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            **extra.pop("meta", {}),
        },
        "status": {
            "phase": extra.pop("phase", "Failed"),
            "conditions": extra.pop("conditions", []),
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        },
    }


def test_the_first_pod_to_fail_by_itself_is_the_one_named() -> None:
    culprit = pod("tj-1-aaaaa", 1, 1, "2026-01-01T00:00:05Z")
    # The peer the Job controller stopped after the verdict: deleted, SIGTERM'd, and (here) earlier on the clock.
    stopped = pod("tj-0-bbbbb", 0, 143, "2026-01-01T00:00:04Z", meta={"deletionTimestamp": "2026-01-01T00:00:04Z"})
    later = pod("tj-2-ccccc", 2, 1, "2026-01-01T00:00:09Z")
    running = pod("tj-3-ddddd", 3, None, "", phase="Running")
    failure = first_failed_pod([stopped, later, running, culprit])
    assert failure == WorkerFailure("tj-1-aaaaa", "1", 1, disrupted=False, detail="Error")
    assert first_failed_pod([running]) is None


def test_within_the_same_second_a_killed_worker_is_named_before_the_peers_that_lost_it() -> None:
    peer = pod("tj-0-aaaaa", 0, 1, "2026-01-01T00:00:05Z")  # gloo: "connection closed by peer", exit 1
    killed = pod("tj-1-bbbbb", 1, 137, "2026-01-01T00:00:05Z")  # kill -9
    terminated = pod("tj-2-ccccc", 2, 143, "2026-01-01T00:00:05Z")  # SIGTERM: not a cause
    failure = first_failed_pod([peer, terminated, killed])
    assert failure is not None and (failure.pod, failure.exit_code) == ("tj-1-bbbbb", 137)
    assert first_failed_pod([terminated, peer]) == WorkerFailure("tj-0-aaaaa", "0", 1, disrupted=False, detail="Error")


def test_a_disrupted_pod_is_recognised_by_its_condition() -> None:
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
    preempted = pod("tj-0-eeeee", 0, 143, "2026-01-01T00:00:03Z", conditions=[disruption],
                    meta={"deletionTimestamp": "2026-01-01T00:00:01Z"})  # fmt: skip
    peer = pod("tj-1-fffff", 1, 1, "2026-01-01T00:00:06Z")
    failure = first_failed_pod([peer, preempted])
    assert failure is not None and failure.disrupted and failure.pod == "tj-0-eeeee"
    assert failure.describe() == "worker 0 (pod tj-0-eeeee) was disrupted (PreemptionByScheduler)"


def conds(update: Any) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in update.patch["conditions"]}


def test_a_restart_is_recorded_then_cleared_when_the_next_attempt_runs() -> None:
    running = training_status(SPEC, job(active=2, ready=2, startTime="2026-01-01T00:00:00Z"), {}, generation=1, now=T0)
    failed = job(failure="BackoffLimitExceeded", failed=1)
    decision = decide_recovery(failed, running.patch, backoff_limit=2, failed_pod=CRASH)
    update = training_status(SPEC, failed, running.patch, generation=1, now=T0, recovery=decision)
    assert update.patch["state"] == "Restarting"
    assert (update.patch["restarts"], update.patch["restartsCountTowardsMax"]) == (1, 1)
    assert conds(update)["Restarting"] == ("True", "WorkerFailed")
    assert conds(update)["Failed"] == ("False", "NotFailed") and conds(update)["Running"] == ("False", "Restarting")
    restarting = next(c for c in update.patch["conditions"] if c["type"] == "Restarting")
    assert "tj-1-x7k2p" in restarting["message"] and "code 1" in restarting["message"]
    assert [(e.type, e.reason) for e in update.events] == [("Warning", "WorkerFailed")]
    assert "completionTime" not in update.patch

    # The next attempt's Job: starting, then all workers ready. The job's start time stays the first one.
    starting = job(1, active=2, ready=1, startTime="2026-01-01T00:09:00Z")
    after_restart = {**running.patch, **update.patch}  # the status as merged by the API server
    waiting = training_status(SPEC, starting, after_restart, generation=1, now=T0 + timedelta(minutes=9))
    assert waiting.patch["state"] == "Restarting" and conds(waiting)["Restarting"] == ("True", "WorkerFailed")
    assert waiting.patch["restarts"] == 1 and not waiting.events
    assert "startTime" not in waiting.patch  # the first attempt's is kept
    ready = job(1, active=2, ready=2, startTime="2026-01-01T00:09:00Z")
    recovered = training_status(SPEC, ready, waiting.patch, generation=1, now=T0 + timedelta(minutes=10))
    assert recovered.patch["state"] == "Running"
    assert conds(recovered)["Restarting"] == ("False", "WorkersRecovered")
    assert [e.reason for e in recovered.events] == ["AllWorkersReady"]


def test_a_second_restart_before_recovery_still_posts_an_event_and_a_disruption_is_not_counted() -> None:
    first = training_status(
        SPEC, job(failure="BackoffLimitExceeded"), {}, generation=1, now=T0,
        recovery=decide_recovery(job(failure="BackoffLimitExceeded"), {}, backoff_limit=2, failed_pod=CRASH),
    )  # fmt: skip
    again = job(1, failure="BackoffLimitExceeded")
    decision = decide_recovery(again, first.patch, backoff_limit=2, failed_pod=EVICTED)
    second = training_status(SPEC, again, first.patch, generation=1, now=T0, recovery=decision)
    assert (second.patch["restarts"], second.patch["restartsCountTowardsMax"]) == (2, 1)
    assert [(e.type, e.reason) for e in second.events] == [("Warning", "WorkerDisrupted")]


def test_exhausted_restarts_fail_the_job() -> None:
    failed = job(2, failure="BackoffLimitExceeded")
    previous = status(2, 2)
    update = training_status(SPEC, failed, previous, generation=1, now=T0)  # decided without the pod
    assert update.patch["state"] == "Failed" and conds(update)["Failed"] == ("True", "BackoffLimitExceeded")
    failed_cond = next(c for c in update.patch["conditions"] if c["type"] == "Failed")
    assert failed_cond["message"].startswith("a worker failed; runPolicy.backoffLimit (2) reached")
    assert update.patch["completionTime"] == "2026-01-01T00:05:00Z" and update.patch["restarts"] == 2


OWNER = Owner("moeops.dev/v1alpha1", "MoETrainingJob", "tj", "ml", "uid-1", 1)


def children(spec: MoETrainingJobSpec, **kw: Any) -> dict[str, Any]:
    built = training_children(OWNER, spec, *plan_training_job(spec), OperatorConfig(), **kw)
    return {c.kind: c for c in built}


def test_the_children_of_a_later_attempt_carry_it_and_what_is_left_of_the_deadline() -> None:
    spec = SPEC.model_copy(update={"run_policy": SPEC.run_policy.model_copy(update={"active_deadline_seconds": 3600})})
    first = children(spec)
    assert first["Job"].body["metadata"]["labels"][ATTEMPT] == "0"
    later = children(spec, attempt=3, deadline_left_s=1200)
    job_child, service = later["Job"], later["Service"]
    assert job_child.body["metadata"]["labels"][ATTEMPT] == "3"
    assert job_child.body["spec"]["template"]["metadata"]["labels"][ATTEMPT] == "3"
    assert ATTEMPT not in job_child.managed["metadata"]["labels"]  # an older Job is never relabelled
    assert service.body["spec"]["selector"][ATTEMPT] == "3" and service.managed["spec"]["selector"][ATTEMPT] == "3"
    assert job_child.body["spec"]["activeDeadlineSeconds"] == 1200
    assert first["Job"].body["spec"]["activeDeadlineSeconds"] == 3600
    spec_of_job = job_child.body["spec"]
    assert spec_of_job["backoffLimit"] == 0
    (rule,) = spec_of_job["podFailurePolicy"]["rules"]  # no Ignore rule: a lone replacement cannot rejoin
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [78]


def test_remaining_deadline_counts_from_the_first_start() -> None:
    assert remaining_deadline_s(None, "2026-01-01T00:00:00Z", T0) is None
    assert remaining_deadline_s(600, None, T0) == 600
    assert remaining_deadline_s(600, "2026-01-01T00:00:00Z", T0 + timedelta(seconds=100)) == 500
    assert remaining_deadline_s(600, "2026-01-01T00:00:00Z", T0 + timedelta(hours=1)) == 1
