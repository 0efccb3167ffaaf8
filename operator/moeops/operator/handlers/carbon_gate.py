"""Carbon-aware training: a timer per gated MoETrainingJob reads the grid, asks the pure gate, and pauses or resumes.

A job is gated when it has `spec.carbon.maxIntensity` (or is still paused by the gate: removing the threshold must
let it run). Every MOEOPS_CARBON_GATE_INTERVAL_S (30 s by default; read when the handlers are imported, as kopf
fixes a timer's interval then) the timer reads the intensity of `spec.carbon.region` (`GridIntensity`: the
configured series, then the static table), and `planning.carbon_gate.decide_gate` decides (a yearly average or a
stale value is no live reading: `IntensityStale`, and the job runs unless `onFeedLoss: pause`; the dwell since the
gate's last action is read from the `CarbonPaused` condition). A pause or resume is one
conditional status write, after the children are brought in line with it: the worker Job is suspended exactly as
for `runPolicy.suspend` (the pods get SIGTERM and checkpoint), or unsuspended (the new pods resume from the
checkpoint). While paused, every tick re-applies the suspension, so a reconcile that raced with the pause and
unsuspended the Job is corrected within one interval.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from moeops.api.v1alpha1.trainingjob import PLURAL, MoETrainingJobSpec

from ..config import OperatorConfig
from ..grid_intensity import GridIntensity
from ..kube import Kube
from ..planning.carbon_gate import Action, GateMemory, decide_gate, is_carbon_paused
from ..status import StatusUpdate, is_finished
from ..status.carbon_gate import gate_status, merge_events
from .common import api_errors_to_kopf, config_of, kube_of, now, with_fresh_owner
from .observe import traced
from .training import TRAINING, reconcile
from .typed import spec_of

GATE_INTERVAL_S = OperatorConfig.from_env(os.environ).carbon_gate_interval_s


def gated(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Jobs the timer runs for: those with a threshold, and those the gate still holds."""
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


@kopf.timer(*TRAINING, interval=GATE_INTERVAL_S, initial_delay=GATE_INTERVAL_S, when=gated)
@traced()
@api_errors_to_kopf
def carbon_gate(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if is_finished(body.get("status") or {}):
        return
    kube, cfg = kube_of(memo), config_of(memo)
    grid: GridIntensity = memo["grid_intensity"]
    meta = body["metadata"]
    compute = lambda owner: gate_update(kube, cfg, grid, owner)  # noqa: E731
    with_fresh_owner(kube, PLURAL, meta["namespace"], meta["name"], compute, cached=body)
