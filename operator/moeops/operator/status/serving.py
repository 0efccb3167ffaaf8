"""InferenceService status from its Deployment: Ready when a replica serves, Stopped by annotation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .conditions import Event, EventType, StatusUpdate, set_condition, transitions

EVENT_TYPES: dict[str, EventType] = {"Ready": "Normal", "Stopped": "Normal"}
STOP_VALUES = ("true", "false")
"""What `moeops.dev/stop` may say (any case): anything else is shown, not guessed at (the service keeps running)."""


def stop_value_problem(value: str | None) -> str | None:
    """Why the stop annotation's value is not understood (None: absent, or true/false)."""
    if value is None or value.lower() in STOP_VALUES:
        return None
    understood = 'only "true" (scale to zero) or "false" are understood'
    return f"moeops.dev/stop is {value!r}: {understood}; the service keeps running"


def serving_status(
    deployment: Mapping[str, Any] | None,
    previous: Mapping[str, Any],
    *,
    stopped: bool,
    url: str | None,
    model: str | None,
    not_ready: tuple[str, str] | None,
    generation: int,
    now: datetime,
    stop_value: str | None = None,
) -> StatusUpdate:
    """`not_ready` is (reason, message) when the operator itself knows the service can't be ready
    (e.g. the model isn't resolvable yet); otherwise readiness follows the Deployment."""
    before: list[dict[str, Any]] = list(previous.get("conditions") or [])
    dstatus = (deployment or {}).get("status") or {}
    replicas = int(dstatus.get("replicas") or 0)
    ready_replicas = int(dstatus.get("readyReplicas") or 0)

    if stopped:
        ready, reason, message = False, "Stopped", "stopped by the moeops.dev/stop annotation"
    elif not_ready:
        ready, (reason, message) = False, not_ready
    elif ready_replicas > 0:
        ready, reason, message = True, "MinimumReplicasAvailable", f"{ready_replicas}/{replicas} replicas ready"
    elif previous.get("desiredReplicas") == 0:  # the autoscaler's doing, not a failure: say how to wake it
        ready, reason, message = False, "ScaledToZero", "idle: scaled to zero; set moeops.dev/wake to a new value"
    else:
        ready, reason, message = False, "WaitingForReplicas", f"{ready_replicas}/{replicas} replicas ready"

    c = set_condition(before, "Ready", ready, reason, message, now=now, generation=generation)
    problem = stop_value_problem(stop_value)
    stop_reason = "StopAnnotation" if stopped else "InvalidStopAnnotation" if problem else "NotStopped"
    c = set_condition(c, "Stopped", stopped, stop_reason, problem or "", now=now, generation=generation)
    patch: dict[str, Any] = {
        "conditions": c,
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "url": url,
        "model": model,
    }
    events = transitions(before, c, EVENT_TYPES)
    was = next((x for x in before if x.get("type") == "Stopped"), {})
    if problem and was.get("message") != problem:  # a value that is neither true nor false: said once per value
        events.append(Event("Warning", "InvalidStopAnnotation", problem))
    return StatusUpdate(patch, events)
