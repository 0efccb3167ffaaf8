"""Carbon-aware training: the operator's status loop reads the grid for every gated MoETrainingJob, asks the pure
gate, and pauses or resumes.

A job is gated when it has `spec.carbon.maxIntensity` (or is still paused by the gate: removing the threshold must
let it run). Every MOEOPS_CARBON_GATE_INTERVAL_S (30 s by default) the loop (`status_loop.py`, source
`carbon_gate`) reads the intensity of `spec.carbon.region` (`GridIntensity`: the configured series, then the static
table), and `planning.carbon_gate.decide_gate` decides (a yearly average or a stale value is no live reading:
`IntensityStale`, and the job runs unless `onFeedLoss: pause`; the dwell since the gate's last action is read from
the `CarbonPaused` condition). A pause or resume is one conditional status write, after the children are brought in
line with it: the worker Job is suspended exactly as for `runPolicy.suspend` (the pods get SIGTERM and checkpoint),
or unsuspended (the new pods resume from the checkpoint). While paused, every pass re-applies the suspension, so a
reconcile that raced with the pause and unsuspended the Job is corrected within one interval.

Not a kopf timer: kopf puts its finalizer on every object a timer runs for, even behind a `when=` filter (kopf issue
#1074), so deleting a gated job hung while the operator was down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec

from ..config import OperatorConfig
from ..grid_intensity import GridIntensity
from ..kube import Kube
from ..planning.carbon_gate import Action, GateMemory, decide_gate, is_carbon_paused
from ..status import StatusUpdate, is_finished
from ..status.carbon_gate import gate_status, merge_events
from .common import now
from .status_sources import Context, Fields
from .training import reconcile
from .typed import spec_of


def gated(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Jobs the gate runs for: those with a threshold, and those the gate still holds."""
    return (spec.get("carbon") or {}).get("maxIntensity") is not None or is_carbon_paused(dict(status))


def gate_update(kube: Kube, cfg: OperatorConfig, grid: GridIntensity, owner: Mapping[str, Any]) -> StatusUpdate | None:
    """The gate's status update for the owner as read; children re-applied when the gate pauses or resumes."""
    status = owner.get("status") or {}
    if is_finished(status):
        return None
    try:
        spec = spec_of(MoETrainingJobSpec, owner)
    except ValidationError:
        return None  # the owner's own handler reports it.
    at = now()
    carbon = spec.carbon
    reading = grid.reading(carbon.region, at) if carbon.region and carbon.max_intensity is not None else None
    paused = is_carbon_paused(status)
    memory = GateMemory.of(status)
    suspended = spec.run_policy.suspend
    decision = decide_gate(carbon, user_suspended=suspended, reading=reading, paused=paused, memory=memory, now=at)
    generation = int(owner["metadata"].get("generation") or 0)
    gate = gate_status(status, decision, now=at, generation=generation)
    if decision.action is Action.KEEP and not decision.paused:
        return gate  # nothing changes for the workers
    merged = {**owner, "status": {**status, **gate.patch}}
    update = reconcile(kube, cfg, merged)(merged)
    if update is None:
        return gate
    return StatusUpdate(update.patch, merge_events(gate.events, update.events))


async def gate_fields(ctx: Context, body: Mapping[str, Any]) -> Fields:
    """The status loop's source: the gate's update for a gated job (no read, no write for the others)."""
    if ctx.grid is None or not gated(body.get("spec") or {}, body.get("status") or {}):
        return None
    return await asyncio.to_thread(gate_update, ctx.kube, ctx.cfg, ctx.grid, body)
