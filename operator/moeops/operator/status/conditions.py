"""metav1.Condition bookkeeping: transition times that only move when the status does, and the events
that a transition deserves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the custom resource."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class StatusUpdate:
    """A merge patch for the `status` subresource and the events the change deserves."""

    patch: dict[str, Any]
    events: list[Event] = field(default_factory=list)


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime is kept unless the status flips."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    replaced = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        replaced = True
        since = cond.get("lastTransitionTime") if cond.get("status") == value else None
        out.append(_condition(type_, value, reason, message, since or timestamp(now), generation))
    if not replaced:
        out.append(_condition(type_, value, reason, message, timestamp(now), generation))
    return out


def _condition(type_: str, status: str, reason: str, message: str, since: str, generation: int) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def is_true(conditions: Sequence[Mapping[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def transitions(
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    event_types: Mapping[str, EventType],
) -> list[Event]:
    """One event for every condition in `event_types` that became True."""
    return [
        Event(event_types[c["type"]], c["reason"], c["message"] or c["type"])
        for c in after
        if c["type"] in event_types and c["status"] == "True" and not is_true(before, c["type"])
    ]


def problem_status(
    previous: Mapping[str, Any],
    type_: str,
    problem: tuple[str, str] | None,
    *,
    cleared_reason: str,
    generation: int,
    now: datetime,
) -> StatusUpdate | None:
    """A problem condition (`type_` True while something is wrong): True with the problem's (reason, message) and a
    Warning event when it is new, False with `cleared_reason` once it is gone; None when the status already says so
    (or never said anything: no condition is added for what was never a problem)."""
    conditions: list[dict[str, Any]] = list(previous.get("conditions") or [])
    was = next((c for c in conditions if c.get("type") == type_), None)
    if problem is None:
        if was is None or was.get("status") != "True":
            return None
        cleared = set_condition(conditions, type_, False, cleared_reason, "", now=now, generation=generation)
        return StatusUpdate({"conditions": cleared})
    reason, message = problem
    if was is not None and was.get("status") == "True" and was.get("message") == message:
        return None
    shown = set_condition(conditions, type_, True, reason, message, now=now, generation=generation)
    return StatusUpdate({"conditions": shown}, [Event("Warning", reason, message)])
