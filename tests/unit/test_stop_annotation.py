"""`moeops.dev/stop` says true or false: any other value is surfaced on the InferenceService, never guessed at."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from moeops.operator.status import StatusUpdate
from moeops.operator.status.serving import serving_status

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
DEPLOYMENT = {"status": {"replicas": 1, "readyReplicas": 1}}


def status(value: str | None, previous: dict[str, Any] | None = None) -> StatusUpdate:
    stopped = (value or "").lower() == "true"
    return serving_status(DEPLOYMENT, previous or {}, stopped=stopped, url="u", model="m", not_ready=None,
                          generation=1, now=T0, stop_value=value)  # fmt: skip


def stopped_condition(update: StatusUpdate) -> dict[str, Any]:
    return next(c for c in update.patch["conditions"] if c["type"] == "Stopped")


def warnings(update: StatusUpdate) -> list[str]:
    return [e.reason for e in update.events if e.type == "Warning"]


def test_a_value_neither_true_nor_false_is_a_reason_a_message_and_one_warning() -> None:
    yes = status("yes")
    condition = stopped_condition(yes)
    assert (condition["status"], condition["reason"]) == ("False", "InvalidStopAnnotation")
    assert "'yes'" in condition["message"] and "keeps running" in condition["message"]
    assert warnings(yes) == ["InvalidStopAnnotation"]
    assert warnings(status("yes", yes.patch)) == []  # said once per value
    assert warnings(status("1", yes.patch)) == ["InvalidStopAnnotation"]


def test_true_false_and_no_annotation_are_understood() -> None:
    assert stopped_condition(status("TRUE"))["reason"] == "StopAnnotation"
    for value in ("false", None):
        update = status(value)
        assert stopped_condition(update)["reason"] == "NotStopped"
        assert all(e.type == "Normal" for e in update.events)
