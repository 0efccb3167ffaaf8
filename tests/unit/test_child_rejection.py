"""A child the API server refuses shows in the owner's status: `ChildRejected` with the API server's message."""

from __future__ import annotations

from datetime import UTC, datetime

from moeops.operator.status.rejection import accepted, rejection_status

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
MESSAGE = 'create Job ml/j: Job.batch "j" is invalid: spec.template.spec.nodeSelector: Invalid value: "bad key"'


def test_a_refusal_sets_the_condition_and_posts_one_warning() -> None:
    first = rejection_status({}, "ChildRejected", MESSAGE, generation=1, now=T0)
    (condition,) = first.patch["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("ChildRejected", "True", "ChildRejected")
    assert condition["message"] == MESSAGE and first.patch["observedGeneration"] == 1
    assert [(e.type, e.reason, e.message) for e in first.events] == [("Warning", "ChildRejected", MESSAGE)]

    again = rejection_status(first.patch, "ChildRejected", MESSAGE, generation=2, now=T0)
    assert again.events == []  # the same refusal after an edit that did not fix it: no second event
    other = rejection_status(first.patch, "ChildRejected", "another refusal", generation=3, now=T0)
    assert [e.message for e in other.events] == ["another refusal"]


def test_children_that_went_through_clear_the_condition() -> None:
    refused = rejection_status({}, "ChildRejected", MESSAGE, generation=1, now=T0).patch["conditions"]
    (cleared,) = accepted(refused, generation=2, now=T0)
    assert (cleared["status"], cleared["reason"], cleared["message"]) == ("False", "ChildrenAccepted", "")
    running = [{"type": "Running", "status": "True", "reason": "AllWorkersReady", "message": ""}]
    assert accepted(running, generation=2, now=T0) == running  # never refused: no condition added
