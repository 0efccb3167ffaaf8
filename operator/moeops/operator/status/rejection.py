"""A child the API server refuses, in the owner's status: condition `ChildRejected` and a Warning event (pure).

Without it a refused child (a nodeSelector key the API server refuses, requests above limits, …) was a handler error
in the operator's log only: the resource had no status and no event. The condition carries the API server's own
message; it is set False (`ChildrenAccepted`) by the next reconcile whose children all went through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .conditions import Event, StatusUpdate, set_condition

CONDITION = "ChildRejected"
ACCEPTED = "ChildrenAccepted"


def rejection_status(
    previous: Mapping[str, Any], reason: str, message: str, *, generation: int, now: datetime
) -> StatusUpdate:
    """`ChildRejected=True` with the API server's `message`; a Warning event when it is new (a different refusal
    after an edit is new too). `reason`: `ChildRejected` (invalid) or `ChildNameConflict` (a name taken)."""
    before: list[dict[str, Any]] = list(previous.get("conditions") or [])
    was = next((c for c in before if c.get("type") == CONDITION and c.get("status") == "True"), None)
    conditions = set_condition(before, CONDITION, True, reason, message, now=now, generation=generation)
    patch = {"conditions": conditions, "observedGeneration": generation}
    news = was is None or was.get("message") != message or was.get("reason") != reason
    return StatusUpdate(patch, [Event("Warning", reason, message)] if news else [])


def accepted(conditions: Sequence[Mapping[str, Any]], *, generation: int, now: datetime) -> list[dict[str, Any]]:
    """The conditions once every child went through: `ChildRejected` False if it was ever set, else unchanged."""
    if not any(c.get("type") == CONDITION for c in conditions):
        return [dict(c) for c in conditions]
    return set_condition(conditions, CONDITION, False, ACCEPTED, "", now=now, generation=generation)
