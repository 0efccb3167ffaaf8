"""InferenceService status from its Deployment: Ready when a replica serves, Stopped by annotation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .conditions import EventType, StatusUpdate, set_condition, transitions

EVENT_TYPES: dict[str, EventType] = {"Ready": "Normal", "Stopped": "Normal"}


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
    stop_reason = "StopAnnotation" if stopped else "NotStopped"
    c = set_condition(c, "Stopped", stopped, stop_reason, "", now=now, generation=generation)
    patch: dict[str, Any] = {
        "conditions": c,
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "url": url,
        "model": model,
    }
    return StatusUpdate(patch, transitions(before, c, EVENT_TYPES))
