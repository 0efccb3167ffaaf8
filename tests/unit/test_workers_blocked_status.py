"""What keeps a job's workers from starting, from its pods and its Job's events (pure): `WorkersBlocked`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from moeops.operator.status.blocked import blocked_status, job_problem, pod_problem

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def test_the_schedulers_and_the_kubelets_reasons_are_problems() -> None:
    unschedulable = pod("j-0", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": UNSCHEDULABLE}])  # fmt: skip
    assert pod_problem(unschedulable) == ("Unschedulable", f"pod j-0: {UNSCHEDULABLE}")
    waiting = {"name": "trainer", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
    assert pod_problem(pod("j-1", containerStatuses=[waiting])) == (
        "ErrImagePull",
        "pod j-1 container trainer: not found",
    )
    creating = {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_problem(pod("j-1", containerStatuses=[creating])) is None  # clears by itself
    assert pod_problem(pod("j-2", phase="Running")) is None
    assert pod_problem({**unschedulable, "status": {**unschedulable["status"], "phase": "Running"}}) is None


def test_the_jobs_newest_failed_create_is_the_problem_when_it_has_no_pod() -> None:
    events = [
        {"type": "Warning", "reason": "FailedCreate", "message": "old", "lastTimestamp": "2026-03-01T11:00:00Z",
         "involvedObject": {"name": "j"}},
        {"type": "Warning", "reason": "FailedCreate", "message": "exceeded quota", "lastTimestamp":
         "2026-03-01T12:00:00Z", "involvedObject": {"name": "j"}},
        {"type": "Normal", "reason": "SuccessfulCreate", "message": "made j-0", "involvedObject": {"name": "j"}},
    ]  # fmt: skip
    assert job_problem(events) == ("FailedCreate", "Job j: exceeded quota")
    assert job_problem(events[2:]) is None


def test_the_condition_and_one_warning_per_problem_then_cleared() -> None:
    problem = ("Unschedulable", f"pod j-0: {UNSCHEDULABLE}")
    blocked = blocked_status({}, problem, generation=1, now=T0)
    assert blocked is not None
    (condition,) = blocked.patch["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("WorkersBlocked", "True", "Unschedulable")
    assert [(e.type, e.reason) for e in blocked.events] == [("Warning", "Unschedulable")]
    assert blocked_status(blocked.patch, problem, generation=1, now=T0) is None  # said already
    cleared = blocked_status(blocked.patch, None, generation=1, now=T0)
    assert cleared is not None and cleared.patch["conditions"][0]["status"] == "False" and not cleared.events
    assert blocked_status({}, None, generation=1, now=T0) is None  # never blocked: no condition at all
