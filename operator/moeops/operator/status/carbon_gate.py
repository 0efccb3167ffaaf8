"""The carbon gate's conditions and events: `CarbonPaused`, `CarbonGateActive`, `IntensityStale`, and the events
of their changes.

The pause itself reaches the workers through the same path as a user's suspend: `training_status` reports the job
`Suspended` (reason CarbonPaused) and `desired_suspend` suspends the worker Job, whose pods get SIGTERM and write
their checkpoint within the grace period; on resume the new pods load it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ..planning.carbon_gate import (
    ACTIVE_CONDITION,
    PAUSED_CONDITION,
    STALE_CONDITION,
    WARN_REASONS,
    Action,
    GateDecision,
)
from .conditions import Event, StatusUpdate, set_condition

ACTION_EVENTS = {Action.PAUSE: "CarbonPaused", Action.RESUME: "CarbonResumed"}


def _condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any]:
    return next((c for c in conditions if c.get("type") == type_), {})


def gate_status(previous: Mapping[str, Any], decision: GateDecision, *, now: datetime, generation: int) -> StatusUpdate:
    """The conditions patch for `decision` and its events: Normal CarbonPaused / CarbonResumed on a change of the
    pause, Warning CarbonGateInactive when the gate stops seeing the grid or its feed goes stale (once per reason,
    not every tick)."""
    before: list[dict[str, Any]] = list(previous.get("conditions") or [])
    c = set_condition(
        before, PAUSED_CONDITION, decision.paused, decision.reason, decision.message, now=now, generation=generation
    )
    c = set_condition(
        c,
        ACTIVE_CONDITION,
        decision.active,
        decision.active_reason,
        decision.active_message,
        now=now,
        generation=generation,
    )
    c = set_condition(
        c,
        STALE_CONDITION,
        decision.stale,
        decision.stale_reason,
        decision.stale_message,
        now=now,
        generation=generation,
    )
    events: list[Event] = []
    if decision.action in ACTION_EVENTS:
        events.append(Event("Normal", ACTION_EVENTS[decision.action], decision.message))
    was = _condition(before, ACTIVE_CONDITION)
    newly_blind = was.get("status") != "False" or was.get("reason") != decision.active_reason
    if not decision.active and decision.active_reason in WARN_REASONS and newly_blind:
        events.append(Event("Warning", "CarbonGateInactive", decision.active_message))
    return StatusUpdate({"conditions": c}, events)


def merge_events(first: Sequence[Event], then: Sequence[Event]) -> list[Event]:
    """`first`, then those of `then` whose reason `first` lacks (one event per reason and write)."""
    reasons = {event.reason for event in first}
    return [*first, *(event for event in then if event.reason not in reasons)]
