"""Carbon-aware training: whether a MoETrainingJob should run now, given the grid's carbon intensity.

`spec.carbon.maxIntensity` (gCO2e/kWh) opts a job in. The gate is a three-way decision, `decide_gate`:

- PAUSE when the region's current intensity is above maxIntensity (strictly: "dirtier than that");
- RESUME a paused job once the intensity is below maxIntensity × (1 − RESUME_MARGIN);
- KEEP otherwise.

Hysteresis by a band, not by a minimum time below the threshold: grid intensity is published as a step function
(one value per settlement period, 30–60 minutes), so a dwell time would delay each resume by up to a whole period
for nothing, while the flapping a gate must avoid comes from successive periods' values jittering around the
threshold, which a 5% band absorbs. The band is also stateless: the pause condition in `.status` is all the gate
remembers, so an operator restart changes nothing.

Fail open. A gate that cannot see the grid (no region, a region no source knows, no current value) never pauses,
and resumes a job it paused, with the reason on the `CarbonGateActive` condition: a stale or missing feed must not
hold a job forever.

The user's `runPolicy.suspend` always wins. While it is true the gate neither pauses nor resumes and drops a
pause of its own (the job stays suspended by the user); a carbon pause only ever applies to a job the user lets
run. To run a job whatever the grid, remove `spec.carbon.maxIntensity`: the gate then clears its pause at once.
A user setting `runPolicy.suspend: false` on a job paused for carbon does not override the gate (false is also
the default, so it says nothing about the grid).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.carbon.accounting.intensity import Intensity

RESUME_MARGIN = 0.05
"""A paused job resumes below maxIntensity × (1 − RESUME_MARGIN)."""
PAUSED_CONDITION = "CarbonPaused"
ACTIVE_CONDITION = "CarbonGateActive"
WARN_REASONS = frozenset({"NoRegion", "UnknownRegion", "NoIntensity"})
"""Reasons the gate is inactive that deserve a Warning: the user asked for a gate that cannot see the grid."""


@dataclass(frozen=True)
class Unavailable:
    """No intensity for the job's region: `reason` is UnknownRegion or NoIntensity, `message` says why."""

    reason: str
    message: str


Reading = Intensity | Unavailable


class Action(Enum):
    PAUSE = "pause"
    RESUME = "resume"
    KEEP = "keep"


@dataclass(frozen=True)
class GateDecision:
    """What to do, the pause state after it (with its reason and message), and whether the gate sees the grid."""

    action: Action
    paused: bool
    reason: str
    message: str
    active: bool
    active_reason: str
    active_message: str


def resume_threshold(max_intensity: float) -> float:
    return max_intensity * (1.0 - RESUME_MARGIN)


def describe(reading: Intensity) -> str:
    """`430 gCO2e/kWh (series:grid.csv, de, valid from 2026-03-01T12:00:00+00:00)`."""
    return (
        f"{reading.g_co2e_per_kwh:g} gCO2e/kWh ({reading.source}, {reading.region}, "
        f"valid from {reading.valid_from.isoformat()})"
    )


def _idle(paused: bool, reason: str, message: str, active_reason: str, active_message: str) -> GateDecision:
    """The gate does not decide on the grid: a pause of its own is dropped (the job runs unless the user holds it)."""
    action = Action.RESUME if paused else Action.KEEP
    return GateDecision(action, False, reason, message, False, active_reason, active_message)


def decide_gate(carbon: CarbonSpec, *, user_suspended: bool, reading: Reading | None, paused: bool) -> GateDecision:
    """The gate's decision; `paused` is whether the job is carbon-paused now (from its status).

    `reading` is None when the job names no region (nothing was looked up).
    """
    limit = carbon.max_intensity
    if limit is None:
        return _idle(paused, "GateDisabled", "spec.carbon.maxIntensity is not set", "NoThreshold", "")
    if user_suspended:
        msg = "spec.runPolicy.suspend holds the job; the carbon gate waits"
        return _idle(paused, "SuspendedByUser", msg, "SuspendedByUser", msg)
    if reading is None:
        msg = "spec.carbon.region is not set: the gate cannot read the grid and never pauses the job"
        return _idle(paused, "IntensityUnknown", msg, "NoRegion", msg)
    if isinstance(reading, Unavailable):
        msg = f"no grid intensity, the gate never pauses the job: {reading.message}"
        return _idle(paused, "IntensityUnknown", msg, reading.reason, msg)

    value = reading.g_co2e_per_kwh
    seen = describe(reading)
    resume_below = resume_threshold(limit)

    def decision(action: Action, now_paused: bool, reason: str, message: str) -> GateDecision:
        return GateDecision(action, now_paused, reason, message, True, "IntensityAvailable", seen)

    if value > limit:
        message = f"grid intensity {seen} is above maxIntensity {limit:g}"
        return decision(Action.KEEP if paused else Action.PAUSE, True, "GridAboveThreshold", message)
    if paused and value >= resume_below:
        message = f"grid intensity {seen} is not yet below the resume threshold {resume_below:g}"
        return decision(Action.KEEP, True, "GridAboveThreshold", message)
    if paused:
        message = f"grid intensity {seen} is below the resume threshold {resume_below:g}"
        return decision(Action.RESUME, False, "GridBelowThreshold", message)
    return decision(Action.KEEP, False, "GridBelowThreshold", f"grid intensity {seen} is within maxIntensity {limit:g}")


def is_carbon_paused(status: Mapping[str, Any]) -> bool:
    """Whether `.status` says the gate paused the job (its `CarbonPaused` condition is True)."""
    conditions = status.get("conditions") or []
    return any(c.get("type") == PAUSED_CONDITION and c.get("status") == "True" for c in conditions)
