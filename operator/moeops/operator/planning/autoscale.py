"""How many model servers an InferenceService should run, from the load its servers report (pure).

Knative's KPA in its stable mode, on concurrency, without the panic mode. Every tick (the operator's timer, a few
seconds apart) `decide` gets the latest load of each server pod that reports (from the `moeops-serving-load`
bucket; a pod that stopped reporting has dropped out by the bucket's TTL) and:

1. demand = Σ (in_flight + queued) over the pods: requests being served plus those waiting for a batch slot.
2. The service is *active* this tick when demand > 0, or when the `moeops.dev/wake` annotation holds a value not
   acted on before (the wake: no activator holds requests for a service at zero, so something — a user, a gateway,
   a CronJob before office hours — sets a new value, e.g. a timestamp). An active tick restarts the idle timer.
3. The recommendation: ceil(demand / targetInFlight), bounded to [max(min, 1), max]. Only when min == 0 and the
   service has not been active for `scaleToZeroAfterSeconds` is it 0.
4. The replicas: the largest recommendation of the last `stableWindowSeconds` (this tick's included), bounded to
   [max(min, 1), max]. A rise therefore applies at once (the newest recommendation is the largest) and a fall only
   once every higher recommendation has left the window: a burst of load that pauses for a moment does not cost
   a scale-down followed by a cold start. Zero is the exception, applied as soon as it is recommended: the idle
   period is itself a window of no load, longer than the stable one.

The state is the window of recommendations, when the service was last active and which wake value was acted on
last. The operator keeps it in memory per object (kopf's memo) and persists only the decided replicas and the wake
value (in `.status`): after an operator restart `initial_state` starts a full window at the replicas in force and
the idle timer at "now", so a restart delays a scale-down or a scale to zero by at most one window or idle
period, and never scales anything down early.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class PodLoad(Protocol):
    """What `decide` reads of a pod's load (`moeops.bus.serving_messages.ServerLoad` is one)."""

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...


@dataclass(frozen=True)
class Policy:
    """The spec's `replicas` block, in the terms of the algorithm."""

    min_replicas: int
    max_replicas: int
    target_in_flight: int
    stable_window_s: float = 60.0
    scale_to_zero_after_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1 or self.target_in_flight < 1:
            raise ValueError(f"need 0 <= min <= max, max >= 1 and target >= 1: {self}")
        if self.stable_window_s <= 0 or self.scale_to_zero_after_s <= 0:
            raise ValueError("the stable window and the idle period must be positive")

    @property
    def floor(self) -> int:
        """The fewest replicas while the service is not idle: a service that has load serves it."""
        return max(self.min_replicas, 1)

    def bounded(self, replicas: int) -> int:
        return min(self.max_replicas, max(self.floor, replicas))


@dataclass(frozen=True)
class State:
    replicas: int
    """The replicas decided last (what the Deployment was set to)."""
    last_active_s: float | None
    """When demand was last seen, or the last wake (seconds on the caller's clock); None: not since the state
    began at zero replicas (idle already)."""
    wake: str | None = None
    """The last `moeops.dev/wake` value acted on."""
    window: tuple[tuple[float, int], ...] = field(default_factory=tuple)
    """(time, recommendation) of the ticks within the stable window, oldest first."""


def initial_state(replicas: int, now_s: float, wake: str | None) -> State:
    """The state at the first tick, or after an operator restart: the replicas in force fill the window (nothing is
    scaled down before a window has passed) and the idle timer starts now, unless the service is at zero already
    (an operator restart must not wake every idle service); `wake` is the value last acted on (from the status), so
    an old annotation does not wake the service again."""
    last_active = None if replicas == 0 else now_s
    return State(replicas=replicas, last_active_s=last_active, wake=wake, window=((now_s, replicas),))


class Reason(StrEnum):
    STEADY = "Steady"
    SCALE_UP = "ScaleUp"
    STABILIZING = "Stabilizing"
    """Less load than the replicas carry, but higher recommendations are still within the window."""
    SCALE_DOWN = "ScaleDown"
    SCALED_TO_ZERO = "ScaledToZero"
    WAKE = "Wake"
    BOUNDS = "Bounds"
    """spec.replicas changed and the replicas in force are outside the new bounds."""


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: Reason
    message: str
    demand: int
    state: State
    previous: int
    """The replicas before this tick."""

    @property
    def changed(self) -> bool:
        return self.replicas != self.previous


def decide(policy: Policy, loads: Iterable[PodLoad], now_s: float, wake: str | None, state: State) -> Decision:
    """One tick of the algorithm of the module docstring."""
    pods = list(loads)
    demand = sum(load.in_flight + load.queued for load in pods)
    woken = wake is not None and wake != state.wake
    last_active = now_s if demand > 0 or woken else state.last_active_s
    idle_s = math.inf if last_active is None else now_s - last_active
    wanted = math.ceil(demand / policy.target_in_flight)
    if policy.min_replicas == 0 and idle_s >= policy.scale_to_zero_after_s:
        recommendation = 0
    else:
        recommendation = policy.bounded(wanted)
    horizon = now_s - policy.stable_window_s
    window = (*((t, r) for t, r in state.window if t > horizon), (now_s, recommendation))
    if recommendation == 0:
        replicas, window = 0, ((now_s, 0),)
    else:
        replicas = policy.bounded(max(r for _, r in window))

    previous = state.replicas
    seen = f"{demand} request(s) in flight or queued on {len(pods)} reporting pod(s)"
    held = f", held at replicas.max {policy.max_replicas}" if wanted > policy.max_replicas else ""
    if woken and replicas >= previous:
        reason, message = Reason.WAKE, f"woken by moeops.dev/wake={wake}"
    elif replicas == 0:
        reason = Reason.SCALED_TO_ZERO
        idle = "since the autoscaler started" if last_active is None else f"for {idle_s:.0f}s"
        message = f"no load {idle} (scaleToZeroAfterSeconds {policy.scale_to_zero_after_s:.0f})"
    elif _out_of_bounds(policy, previous) and replicas == policy.bounded(previous):
        reason, message = Reason.BOUNDS, f"replicas {previous} outside [{policy.floor}, {policy.max_replicas}]"
    elif replicas > previous:
        reason = Reason.SCALE_UP
        message = f"{seen}: {wanted} replica(s) at targetInFlight {policy.target_in_flight}{held}"
    elif replicas < previous:
        reason, message = Reason.SCALE_DOWN, f"{seen}, for the last {policy.stable_window_s:.0f}s"
    elif recommendation < replicas:
        reason = Reason.STABILIZING
        message = f"{seen}: {recommendation} would do; holding {replicas} for the stable window"
    else:
        reason, message = Reason.STEADY, seen + held
    new_state = State(replicas=replicas, last_active_s=last_active, wake=wake if woken else state.wake, window=window)
    return Decision(replicas, reason, message, demand, new_state, previous)


def _out_of_bounds(policy: Policy, replicas: int) -> bool:
    """Replicas the current bounds do not allow (spec.replicas changed); 0 is allowed when min is 0."""
    if replicas == 0:
        return policy.min_replicas > 0
    return not policy.floor <= replicas <= policy.max_replicas
