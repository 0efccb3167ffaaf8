"""Carbon-aware training: whether a MoETrainingJob should run now, given the grid's carbon intensity.

`spec.carbon.maxIntensity` (gCO2e/kWh) opts a job in. The gate is a three-way decision, `decide_gate`:

- PAUSE when the region's live intensity is above maxIntensity (strictly: "dirtier than that");
- RESUME a paused job once the intensity is below maxIntensity − `spec.carbon.hysteresis` (20 g by default);
- KEEP otherwise, and within `spec.carbon.minDwellSeconds` (30 min by default) of the gate's last pause or resume.

Why both a band and a dwell: grid intensity is a step function (one value per settlement period, 5–60 minutes)
whose successive values jitter by ±20 g around any threshold; a band alone (the former 5 %) still let that jitter
pause and resume a job 9 times in 48 h, each a SIGTERM, a checkpoint and a restart. The band is absolute because
the jitter is (it does not scale with the threshold). The dwell bounds the actions to one per period whatever the
series does. Both are stateless: the `CarbonPaused` condition's status, reason and lastTransitionTime are all the
gate remembers (`GateMemory.of`), so an operator restart changes nothing.

Fail open. The gate acts only on a live value (`intensity.is_live`): the static table's yearly average (the README's
own example, DE at 381 g against maxIntensity 300, paused its job forever) and a stale last-good value are no reading
of the grid now, and neither is no value at all. Then the condition `IntensityStale` is True, and by default
(`onFeedLoss: run`) the gate never pauses and resumes a job it paused; `onFeedLoss: pause` holds the job until a
live value is back. A job with no region, or a region no source knows, is a configuration problem, not a lost feed:
never paused, with the reason on `CarbonGateActive`.

The user's `runPolicy.suspend` always wins. While it is true the gate neither pauses nor resumes and drops a
pause of its own (the job stays suspended by the user); a carbon pause only ever applies to a job the user lets
run. To run a job whatever the grid, remove `spec.carbon.maxIntensity`: the gate then clears its pause at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.carbon.accounting.intensity import Intensity, is_live

PAUSED_CONDITION = "CarbonPaused"
ACTIVE_CONDITION = "CarbonGateActive"
STALE_CONDITION = "IntensityStale"
WARN_REASONS = frozenset({"NoRegion", "UnknownRegion", "NoIntensity", "IntensityStale"})
"""Reasons the gate is inactive that deserve a Warning: the user asked for a gate that cannot see the grid."""
NEVER_PAUSED = "GridWithinThreshold"
RESUMED_REASONS = frozenset({"GridBelowThreshold", "MinDwell"})
"""`CarbonPaused=False` reasons that the gate writes after a resume: its lastTransitionTime is that resume."""


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
class GateMemory:
    """What the gate knows of its past from `.status`: whether it holds the job and when it last acted."""

    paused: bool = False
    last_action: datetime | None = None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> GateMemory:
        conditions: list[Mapping[str, Any]] = status.get("conditions") or []
        condition = next((c for c in conditions if c.get("type") == PAUSED_CONDITION), {})
        paused = condition.get("status") == "True"
        acted = paused or condition.get("reason") in RESUMED_REASONS
        since = condition.get("lastTransitionTime")
        return cls(paused, datetime.fromisoformat(since) if acted and since else None)


@dataclass(frozen=True)
class GateDecision:
    """What to do, the pause state after it (with its reason and message), whether the gate sees the grid, and
    whether its feed is stale (`IntensityStale`)."""

    action: Action
    paused: bool
    reason: str
    message: str
    active: bool
    active_reason: str
    active_message: str
    stale: bool = False
    stale_reason: str = "LiveIntensity"
    stale_message: str = ""


def resume_threshold(carbon: CarbonSpec) -> float:
    assert carbon.max_intensity is not None
    return max(carbon.max_intensity - carbon.hysteresis, 0.0)


def describe(reading: Intensity) -> str:
    """`430 gCO2e/kWh (series:grid.csv, de, valid from 2026-03-01T12:00:00+00:00)`."""
    stale = ", stale" if reading.stale else ""
    return (
        f"{reading.g_co2e_per_kwh:g} gCO2e/kWh ({reading.source}, {reading.region}, "
        f"valid from {reading.valid_from.isoformat()}{stale})"
    )


def _idle(paused: bool, reason: str, message: str, active_reason: str, active_message: str) -> GateDecision:
    """The gate does not decide on the grid: a pause of its own is dropped (the job runs unless the user holds it)."""
    action = Action.RESUME if paused else Action.KEEP
    # IntensityStale says nothing here (no feed was needed or none could be asked): False, with the gate's reason.
    return GateDecision(action, False, reason, message, False, active_reason, active_message, False, "GateInactive",
                        active_message)  # fmt: skip


def _stale(reading: Reading) -> tuple[str, str] | None:
    """Why the reading is no live value (reason, message), or None for a live one."""
    if isinstance(reading, Unavailable):
        return ("NoIntensity", reading.message) if reading.reason == "NoIntensity" else None
    if reading.stale:
        return "StaleValue", f"the last live value is past its time to live: {describe(reading)}"
    if not is_live(reading):
        return "YearlyAverageOnly", f"only a yearly average, no live value: {describe(reading)}"
    return None


def decide_gate(
    carbon: CarbonSpec,
    *,
    user_suspended: bool,
    reading: Reading | None,
    paused: bool,
    memory: GateMemory | None = None,
    now: datetime | None = None,
) -> GateDecision:
    """The gate's decision; `paused` is whether the job is carbon-paused now (from its status), `memory` when the
    gate last acted (`GateMemory.of(status)`) and `now` the time, for the dwell (without them: no dwell).

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
    dwell_until = _dwell_until(carbon, memory, now)
    stale = _stale(reading)
    if stale is not None:
        return _on_feed_loss(carbon, paused, stale, dwell_until)
    if isinstance(reading, Unavailable):
        msg = f"no grid intensity, the gate never pauses the job: {reading.message}"
        return _idle(paused, "IntensityUnknown", msg, reading.reason, msg)
    return _on_grid(carbon, reading, paused, dwell_until, resumed=memory is not None and memory.last_action is not None)


def _dwell_until(carbon: CarbonSpec, memory: GateMemory | None, now: datetime | None) -> datetime | None:
    """The end of the dwell after the gate's last action, while it lasts; else None."""
    if memory is None or memory.last_action is None or now is None:
        return None
    until = memory.last_action + timedelta(seconds=carbon.min_dwell_seconds)
    return until if now < until else None


def _on_grid(
    carbon: CarbonSpec, reading: Intensity, paused: bool, dwell_until: datetime | None, *, resumed: bool
) -> GateDecision:
    assert carbon.max_intensity is not None
    limit, value, seen = carbon.max_intensity, reading.g_co2e_per_kwh, describe(reading)
    resume_below = resume_threshold(carbon)

    def decision(action: Action, now_paused: bool, reason: str, message: str) -> GateDecision:
        return GateDecision(action, now_paused, reason, message, True, "IntensityAvailable", seen)

    dwell = f"; the gate waits until {dwell_until.isoformat()} (minDwellSeconds)" if dwell_until else ""
    if value > limit and not paused:
        message = f"grid intensity {seen} is above maxIntensity {limit:g}"
        if dwell_until:
            return decision(Action.KEEP, False, "MinDwell", message + dwell)
        return decision(Action.PAUSE, True, "GridAboveThreshold", message)
    if value > limit or (paused and value >= resume_below):
        message = f"grid intensity {seen} is not below the resume threshold {resume_below:g}"
        return decision(Action.KEEP, True, "GridAboveThreshold", message)
    if paused:
        message = f"grid intensity {seen} is below the resume threshold {resume_below:g}"
        if dwell_until:
            return decision(Action.KEEP, True, "MinDwell", message + dwell)
        return decision(Action.RESUME, False, "GridBelowThreshold", message)
    reason = "GridBelowThreshold" if resumed else NEVER_PAUSED
    return decision(Action.KEEP, False, reason, f"grid intensity {seen} is within maxIntensity {limit:g}")


def _on_feed_loss(
    carbon: CarbonSpec, paused: bool, stale: tuple[str, str], dwell_until: datetime | None
) -> GateDecision:
    """No live value: run (default: never pause, drop a pause) or pause, as `spec.carbon.onFeedLoss` says."""
    stale_reason, stale_message = stale
    if carbon.on_feed_loss == "pause":
        message = f"onFeedLoss: pause holds the job until a live grid intensity is back: {stale_message}"
        if paused or dwell_until is None:
            action = Action.KEEP if paused else Action.PAUSE
            return GateDecision(action, True, "IntensityStale", message, False, "IntensityStale", stale_message,
                                True, stale_reason, stale_message)  # fmt: skip
        message += f"; the gate waits until {dwell_until.isoformat()} (minDwellSeconds)"
        return GateDecision(Action.KEEP, False, "MinDwell", message, False, "IntensityStale", stale_message,
                            True, stale_reason, stale_message)  # fmt: skip
    message = f"no live grid intensity, the gate never pauses the job (onFeedLoss: run): {stale_message}"
    decision = _idle(paused, "IntensityStale", message, "IntensityStale", message)
    return GateDecision(**{**vars(decision), "stale": True, "stale_reason": stale_reason,
                           "stale_message": stale_message})  # fmt: skip


def is_carbon_paused(status: Mapping[str, Any]) -> bool:
    """Whether `.status` says the gate paused the job (its `CarbonPaused` condition is True)."""
    conditions = status.get("conditions") or []
    return any(c.get("type") == PAUSED_CONDITION and c.get("status") == "True" for c in conditions)
