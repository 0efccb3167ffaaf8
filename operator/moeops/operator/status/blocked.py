"""Why a job's workers do not start, in its status: condition `WorkersBlocked` and a Warning event (pure).

The worker Job's own status says nothing when its pods cannot be created (the Job controller only posts
`FailedCreate` events on the Job: a pod security or quota refusal) or when they are stuck before running (the
scheduler's `PodScheduled=False Unschedulable`, the kubelet's image and container-config errors). The operator's
status loop reads the pods (and, when there are none, the Job's events) of a job whose workers are not all ready,
and this module says what blocks them: the first problem it finds, with the message the cluster gave.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .conditions import StatusUpdate, problem_status

CONDITION = "WorkersBlocked"
WAITING_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
)
"""Container waiting reasons that do not clear by themselves (ContainerCreating and PodInitializing do)."""


def pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of what keeps one worker pod from running, or None."""
    name = pod.get("metadata", {}).get("name", "")
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None  # running or ended: whatever held it is over
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
            return str(cond["reason"]), f"pod {name}: {cond.get('message') or cond['reason']}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            detail = waiting.get("message") or waiting["reason"]
            return str(waiting["reason"]), f"pod {name} container {container.get('name')}: {detail}"
    return None


def job_problem(events: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The newest `FailedCreate` event of the worker Job, as (reason, message), or None."""
    failed = [e for e in events if e.get("reason") == "FailedCreate" and e.get("type") == "Warning"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return "FailedCreate", f"Job {newest.get('involvedObject', {}).get('name', '')}: {newest.get('message', '')}"


def blocked_status(
    previous: Mapping[str, Any], problem: tuple[str, str] | None, *, generation: int, now: datetime
) -> StatusUpdate | None:
    """`WorkersBlocked` True with the problem (a Warning event when it is new), False once it is gone; None when
    the status already says so (or never said anything: no condition is added for a job that was never blocked)."""
    return problem_status(
        previous, CONDITION, problem, cleared_reason="WorkersStarting", generation=generation, now=now
    )
