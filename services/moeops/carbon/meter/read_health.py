"""Whether an NVML reading kind is worth asking for now, and a GPU's metering state. Pure: the clock is passed in.

Why not trust one answer. NVML answers NOT_SUPPORTED, UNKNOWN or GPU_IS_LOST transiently: while the driver
reloads, during a GPU reset, under XID errors, on some drivers for a moment after a MIG reconfiguration. Taking one
NOT_SUPPORTED as permanent stopped the energy counter for good (the energy after it was lost, silently). So:

- a failed reading is retried with exponential backoff (`RetryPolicy.base_s` doubling up to `max_s`), so a GPU that
  fell off the bus is not asked ten times a second, and one that comes back is read again within `max_s`;
- a kind is *given up* after `give_up_after` consecutive failures: logged and counted once, the GPU's state becomes
  degraded or lost, and it is still probed every `max_s` (a driver reload ends; a given-up kind that answers again
  is metered again, and the cumulative counter then catches up on the energy it missed);
- NOT_SUPPORTED is taken as permanent only for a kind that never answered and said so `unsupported_after` times
  in a row (a Pascal GPU has no energy counter, and asking it again forever is pointless).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class MeterState(Enum):
    """A GPU's metering, as exported per GPU (`moeops.carbon.meter.state`) and shown in the report."""

    METERED = "metered"
    """Its best reading kind answers: the energy is measured."""
    DEGRADED = "degraded"
    """Its best reading kind is failing: the energy is caught up later (counter) or estimated (power) meanwhile."""
    LOST = "lost"
    """No reading kind answers any more (every one given up): its energy is missing until one comes back."""


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 0.2
    max_s: float = 5.0
    give_up_after: int = 5
    """Five failures in a row span 3 s with the default backoff (0.2 + 0.4 + 0.8 + 1.6): longer than a transient."""
    unsupported_after: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.max_s or self.give_up_after < 1 or self.unsupported_after < 1:
            raise ValueError(f"need 0 < base_s <= max_s and positive counts: {self}")

    def delay_s(self, failures: int) -> float:
        return float(min(self.base_s * 2 ** max(failures - 1, 0), self.max_s))


class Outcome(Enum):
    """What a failure changed, so that the caller logs a change once rather than every failure."""

    RETRYING = "retrying"
    GAVE_UP = "gave_up"
    UNSUPPORTED = "unsupported"


@dataclass
class ReadHealth:
    """One reading kind of one GPU: `due(now)` says whether to call it, `ok`/`failed` record the answer."""

    policy: RetryPolicy
    answered: bool = False
    """It answered at least once: a NOT_SUPPORTED from then on is transient."""
    failures: int = 0
    """Consecutive failures."""
    retry_at_s: float = float("-inf")
    given_up: bool = False
    unsupported: bool = False
    give_ups: int = 0

    def due(self, now_s: float) -> bool:
        return not self.unsupported and now_s >= self.retry_at_s

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def ok(self) -> bool:
        """Record an answer; whether the kind had been given up (it recovered: the caller logs that)."""
        recovered = self.given_up
        self.answered, self.failures, self.given_up, self.retry_at_s = True, 0, False, float("-inf")
        return recovered

    def failed(self, now_s: float, *, not_supported: bool) -> Outcome:
        self.failures += 1
        if not_supported and not self.answered and self.failures >= self.policy.unsupported_after:
            self.unsupported = True
            return Outcome.UNSUPPORTED
        self.retry_at_s = now_s + self.policy.delay_s(self.failures)
        if self.failures >= self.policy.give_up_after and not self.given_up:
            self.given_up = True
            self.give_ups += 1
            return Outcome.GAVE_UP
        return Outcome.RETRYING


def meter_state(counter: ReadHealth, power: ReadHealth) -> MeterState:
    """The GPU's state from its two reading kinds: the counter is the better one wherever it is supported."""
    usable = [kind for kind in (counter, power) if not kind.unsupported]
    if not usable or all(kind.given_up for kind in usable):
        return MeterState.LOST
    return MeterState.DEGRADED if usable[0].failing else MeterState.METERED
