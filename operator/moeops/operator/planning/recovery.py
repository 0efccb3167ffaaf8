"""What to do when a worker of a MoETrainingJob fails: restart the whole group, as JobSet does.

The workers meet in a static torchrun rendezvous (fixed node count, node rank = completion index, rank 0's pod
as the master). A pod that the Job controller replaced alone would join a rendezvous its peers have left, so the
only recovery that works is to stop every worker and start them all again from the last checkpoint (the trainer
resumes from `checkpoint.directory` by itself). The worker Job therefore runs with `backoffLimit: 0`: the first
pod failure fails it, and the Job controller stops the other pods. The operator then decides, with
`decide_recovery`:

- RESTART: record one more restart in `.status.restarts` (the attempt number, carried by every Job and pod of
  the attempt in the label `moeops.dev/restart-attempt`), delete the Job (Foreground: its pods are gone before
  it is) and create a fresh one once it has gone. A restart is counted against `runPolicy.backoffLimit` in
  `.status.restartsCountTowardsMax` unless the pod that failed first was disrupted (the pod condition
  `DisruptionTarget=True`: preemption, eviction, a node drain), which is not the job's fault;
- FAIL: a failure a restart cannot cure — the podFailurePolicy's FailJob rule (exit code 78, a configuration the
  trainer rejects), the active deadline — or the restart budget is spent;
- FOLLOW: the Job of the current attempt has not failed: the status follows it;
- STALE: the Job belongs to an earlier attempt (its restart is recorded): delete it and wait for the next.

The counters live in the owner's status and the attempt in the Job's label, so every decision is a pure function
of what the API server holds: an operator restart in the middle of a group restart picks it up where it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from ..naming import RESTART_ATTEMPT_LABEL

RESTARTABLE_REASON = "BackoffLimitExceeded"
"""The Job's failure reason when a pod failed (with backoffLimit 0, the first failure). Every other reason
(PodFailurePolicy: the FailJob rule; DeadlineExceeded) is final."""
DISRUPTION_CONDITION = "DisruptionTarget"
SIGTERM_EXIT_CODE = 128 + 15


class Verdict(Enum):
    FOLLOW = "follow"
    RESTART = "restart"
    FAIL = "fail"
    STALE = "stale"


@dataclass(frozen=True)
class Recovery:
    """The decision, with the reason and message for the Restarting or Failed condition."""

    verdict: Verdict
    reason: str = ""
    message: str = ""
    counted: bool = False
    """A RESTART that uses one of runPolicy.backoffLimit (a disruption does not)."""


FOLLOW = Recovery(Verdict.FOLLOW)


@dataclass(frozen=True)
class WorkerFailure:
    """The worker pod whose failure failed the Job."""

    pod: str
    rank: str
    exit_code: int | None
    disrupted: bool
    detail: str
    """The container's termination reason, or the disruption's reason."""

    def describe(self) -> str:
        who = f"worker {self.rank} (pod {self.pod})"
        if self.disrupted:
            return f"{who} was disrupted ({self.detail})" if self.detail else f"{who} was disrupted"
        if self.exit_code is None:
            return f"{who} failed" + (f" ({self.detail})" if self.detail else "")
        return f"{who} exited with code {self.exit_code}" + (f" ({self.detail})" if self.detail else "")


def job_attempt(job: Mapping[str, Any]) -> int:
    """The restart attempt a worker Job belongs to (0 for the first, and for Jobs made before the label)."""
    value = ((job.get("metadata") or {}).get("labels") or {}).get(RESTART_ATTEMPT_LABEL, "0")
    try:
        return int(value)
    except ValueError:
        return 0


def restarts(status: Mapping[str, Any]) -> int:
    """Group restarts so far: the attempt the current worker Job must carry."""
    return int(status.get("restarts") or 0)


def counted_restarts(status: Mapping[str, Any]) -> int:
    return int(status.get("restartsCountTowardsMax") or 0)


def job_failure(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Job's failure condition (FailureTarget comes first, Failed once every pod has stopped), or None."""
    conds = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    return conds.get("Failed") or conds.get("FailureTarget")


def needs_failed_pod(job: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether the decision needs to know which pod failed (worth a list of the Job's pods)."""
    failure = job_failure(job)
    return failure is not None and failure.get("reason") == RESTARTABLE_REASON and job_attempt(job) >= restarts(status)


def decide_recovery(
    job: Mapping[str, Any],
    status: Mapping[str, Any],
    *,
    backoff_limit: int,
    failed_pod: WorkerFailure | None,
    durable_checkpoints: bool = True,
) -> Recovery:
    """What to do with the worker Job as observed, given the owner's `.status` and the restart budget.

    `durable_checkpoints`: the checkpoints are on a claim, so the next attempt resumes from the last one (on the
    pods' ephemeral disk they go with the pods, and the message says that the job starts over).
    """
    if job_attempt(job) < restarts(status):
        return Recovery(Verdict.STALE)
    failure = job_failure(job)
    if not failure:
        return FOLLOW
    reason = str(failure.get("reason") or "JobFailed")
    if reason != RESTARTABLE_REASON:  # the FailJob rule, the deadline: another attempt would end the same way
        return Recovery(Verdict.FAIL, reason, str(failure.get("message") or ""))
    what = failed_pod.describe() if failed_pod else "a worker failed"
    used = counted_restarts(status)
    start = "the last checkpoint" if durable_checkpoints else "step 0 (checkpoints on ephemeral disk are lost)"
    if failed_pod and failed_pod.disrupted:
        message = f"{what}: restarting every worker from {start}; not counted ({used} of {backoff_limit} used)"
        return Recovery(Verdict.RESTART, "WorkerDisrupted", message, counted=False)
    if used < backoff_limit:
        message = f"{what}: restarting every worker from {start} (restart {used + 1} of {backoff_limit})"
        return Recovery(Verdict.RESTART, "WorkerFailed", message, counted=True)
    message = f"{what}; runPolicy.backoffLimit ({backoff_limit}) reached: {used} restart(s) used"
    return Recovery(Verdict.FAIL, RESTARTABLE_REASON, message)


def first_failed_pod(pods: Sequence[Mapping[str, Any]]) -> WorkerFailure | None:
    """The pod that failed first among a Job's pods.

    A pod that failed by itself (or was disrupted) is preferred to one the Job controller stopped after the
    verdict (it carries a deletionTimestamp); then the earliest container termination; within the same second
    (the timestamps' resolution) a process killed by a signal other than SIGTERM (exit code > 128: `kill -9`,
    the OOM killer) before one that exited on its own, as its peers do when a collective loses a rank.
    """
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    if not failed:
        return None

    def order(pod: Mapping[str, Any]) -> tuple[int, str, int, str]:
        stopped = bool(pod["metadata"].get("deletionTimestamp")) and not _disruption(pod)
        terminated = _terminated(pod)
        exit_code = int(terminated.get("exitCode") or 0)
        killed = exit_code > 128 and exit_code != SIGTERM_EXIT_CODE
        return int(stopped), terminated.get("finishedAt") or "~", int(not killed), pod["metadata"].get("name", "")

    pod = min(failed, key=order)
    meta = pod["metadata"]
    disruption = _disruption(pod)
    terminated = _terminated(pod)
    exit_code = terminated.get("exitCode")
    return WorkerFailure(
        pod=str(meta.get("name", "")),
        rank=str((meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "?")),
        exit_code=int(exit_code) if exit_code is not None else None,
        disrupted=disruption is not None,
        detail=str((disruption or {}).get("reason") or terminated.get("reason") or ""),
    )


def _disruption(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    conds = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == DISRUPTION_CONDITION and c.get("status") == "True"), None)


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The termination of the pod's first container that failed (else of its first that stopped)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    stopped = [t for s in statuses if (t := (s.get("state") or {}).get("terminated"))]
    return next((t for t in stopped if t.get("exitCode")), stopped[0] if stopped else {})


def remaining_deadline_s(deadline_s: int | None, started: str | None, now: datetime) -> int | None:
    """`runPolicy.activeDeadlineSeconds` for the Job of a later attempt: what is left since the first start, so
    that restarts do not extend it (at least 1 s: a Job out of time fails at once with DeadlineExceeded)."""
    if deadline_s is None or not started:
        return deadline_s
    elapsed = (now - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()
    return max(1, int(deadline_s - elapsed))
