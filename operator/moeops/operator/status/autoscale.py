"""The autoscaler's part of an InferenceService's status: `desiredReplicas` and `autoscaling` (pure).

Written only when the decision says something new (other replicas, another reason, another wake value acted on):
the load figures in the message change every tick, and a status write per service every few seconds would make
every watcher of InferenceServices (kubectl -w, the operator itself) pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..planning.autoscale import Decision, Reason
from .conditions import Event, StatusUpdate, timestamp

EVENT_REASONS = {Reason.SCALE_UP: "ScaledUp", Reason.SCALE_DOWN: "ScaledDown", Reason.SCALED_TO_ZERO: "ScaledToZero",
                 Reason.WAKE: "Woken", Reason.BOUNDS: "ScaledToBounds"}  # fmt: skip


def autoscale_status(status: Mapping[str, Any], decision: Decision, now: datetime) -> StatusUpdate | None:
    """The status patch (and the event) for `decision`, or None when the status already says it."""
    before = status.get("autoscaling") or {}
    recorded = status.get("desiredReplicas")
    said = before.get("reason") == decision.reason.value and before.get("wake") == decision.state.wake
    if recorded == decision.replicas and said:
        return None
    # Before the first decision the Deployment runs what the reconcile gave it (the state's starting replicas).
    was = decision.previous if recorded is None else int(recorded)
    moved = was != decision.replicas
    autoscaling: dict[str, Any] = {
        "reason": decision.reason.value,
        "message": decision.message,
        "wake": decision.state.wake,
        "lastScaleTime": timestamp(now) if moved else before.get("lastScaleTime"),
    }
    events = []
    if moved and (event_reason := EVENT_REASONS.get(decision.reason)):
        text = f"replicas {was} -> {decision.replicas}: {decision.message}"
        events.append(Event("Normal", event_reason, text))
    return StatusUpdate({"desiredReplicas": decision.replicas, "autoscaling": autoscaling}, events)
