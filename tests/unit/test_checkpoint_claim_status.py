"""What the status says about a job's checkpoint claim (pure), and the workers' /dev/shm sized for the model."""

from __future__ import annotations

from datetime import UTC, datetime

from moeops.operator.children.pods import shm_size_limit
from moeops.operator.status.storage import CONDITION, claim_problem, storage_status

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def pvc(*modes: str, phase: str = "Bound") -> dict[str, object]:
    return {"spec": {"accessModes": list(modes)}, "status": {"phase": phase, "accessModes": list(modes)}}


def test_a_missing_lost_or_unshared_claim_is_a_problem_and_a_shared_one_is_not() -> None:
    assert claim_problem("c", None, workers=1) == (
        "ClaimNotFound", "PersistentVolumeClaim 'c' (spec.checkpoint.storage.claimName) not found")  # fmt: skip
    assert claim_problem("c", pvc("ReadWriteMany", phase="Lost"), workers=2)[0] == "ClaimLost"  # type: ignore[index]
    reason, message = claim_problem("c", pvc("ReadWriteOnce"), workers=3) or ("", "")
    assert reason == "ClaimNotShared" and "ReadWriteOnce" in message and "3 workers" in message
    assert claim_problem("c", pvc("ReadWriteOnce"), workers=1) is None  # one node mounts it alone
    assert claim_problem("c", pvc("ReadWriteMany"), workers=8) is None
    pending = {"spec": {"accessModes": ["ReadWriteMany"]}, "status": {"phase": "Pending"}}
    assert claim_problem("c", pending, workers=2) is None  # not bound yet: the spec's modes count


def test_the_condition_is_set_once_with_an_event_and_cleared_when_fixed() -> None:
    problem = ("ClaimNotFound", "PersistentVolumeClaim 'c' not found")
    shown = storage_status({}, problem, generation=1, now=NOW)
    assert shown is not None and [e.reason for e in shown.events] == ["ClaimNotFound"]
    (cond,) = shown.patch["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (CONDITION, "True", "ClaimNotFound")
    assert storage_status(shown.patch, problem, generation=1, now=NOW) is None  # said already: no second event
    cleared = storage_status(shown.patch, None, generation=1, now=NOW)
    assert cleared is not None and not cleared.events
    assert (cleared.patch["conditions"][0]["status"], cleared.patch["conditions"][0]["reason"]) == (
        "False",
        "ClaimUsable",
    )
    assert storage_status({}, None, generation=1, now=NOW) is None  # never a problem: no condition at all


def test_shm_holds_one_copy_of_the_weights_and_at_least_a_gibibyte() -> None:
    assert shm_size_limit() == "1Gi"  # as the API server writes it back: a managed template does not drift
    assert shm_size_limit(10) == "1Gi"
    assert shm_size_limit(3 << 30) == "3Gi"
    assert shm_size_limit((3 << 30) + 1) == "3073Mi"  # rounded up, never below the weights
