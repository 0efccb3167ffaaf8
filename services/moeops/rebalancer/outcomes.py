"""Closed loop: did a plan deliver the gain it predicted? A kind of re-plan that does not pay is made rarer (pure).

After a plan applies and the smoothed step times have settled (`SETTLE_STEPS`), the measured step time is compared
with the one the plan was made from: the realised gain 1 − after / before against the predicted one. A plan that
realised less than `PAID_FRACTION` of its prediction is a miss for each part it changed (data shares, experts,
stages), and each miss in a row doubles the gain that part must predict before it is planned again (at most
2^`MAX_MISSES`); a plan that pays resets its parts. So a re-plan that keeps missing (a pipeline split that moves
a heavy layer back and forth, each time predicting a gain that never comes: the per-layer times are estimated
from per-stage times) stops, and one that pays is not slowed.

One plan is judged at a time: a plan made while an earlier one is still being judged is not judged itself (its
effect is part of the earlier one's measurement). A plan rank 0 refused is not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

SETTLE_STEPS: Final = 15
"""Steps after a plan applies before it is judged: the step times are smoothed with weight 0.2 on the newest
step (load.DEFAULT_SMOOTHING), so 15 steps later the steps before the plan weigh 0.8^15 ≈ 4%."""
PAID_FRACTION: Final = 0.5
"""A plan pays when it realises at least half the gain it predicted (measurements are noisy; an unpaid plan costs
a doubling of its parts' threshold, not a revert)."""
MAX_MISSES: Final = 3
"""A part's threshold is at most 2³ = 8× the job's minimum gain."""

BACKED_OFF: Final = frozenset({"experts", "stages"})
"""The parts a miss backs off. Not the data shares: a re-split moves no weights, and its judgement is confounded
(the speeds and loads drift while it settles, and the next data plans apply inside its 15 steps), so in the
product-driven simulator every data plan came out a miss, the back-off reached 8x and the shares stopped
following the stragglers (benchmarks/rebalance_product_sim.py: 0.78 instead of 0.9). Data plans are still judged
and counted (plans.judged)."""


@dataclass(frozen=True)
class Expected:
    """A plan being judged: what it predicted, from which step time, and from which step on it runs."""

    epoch: int
    parts: tuple[str, ...]
    predicted_gain: float
    step_seconds: float
    apply_at_step: int


@dataclass(frozen=True)
class Judged:
    epoch: int
    parts: tuple[str, ...]
    predicted_gain: float
    realised_gain: float

    @property
    def paid(self) -> bool:
        return self.realised_gain >= PAID_FRACTION * self.predicted_gain


@dataclass
class PlanOutcomes:
    misses: dict[str, int] = field(default_factory=dict)
    """Per part, the plans in a row that changed it and did not pay."""
    expected: Expected | None = None
    last: Judged | None = None
    max_misses: int = MAX_MISSES
    """0: no back-off (the open loop)."""

    def planned(self, expected: Expected) -> None:
        """A plan was published (ignored while another is being judged, or when it changes nothing)."""
        if self.expected is None and expected.parts and expected.step_seconds > 0:
            self.expected = expected

    def acknowledged(self, epoch: int, running: set[str]) -> None:
        """Rank 0 applied plan `epoch`'s parts `running` (the others refused): only those are judged, and a plan
        it applied nothing of is not."""
        expected = self.expected
        if expected is not None and expected.epoch == epoch:
            parts = tuple(part for part in expected.parts if part in running)
            self.expected = replace(expected, parts=parts) if parts else None

    def judge(self, max_step: int, step_seconds: float) -> Judged | None:
        """The plan being judged, once `SETTLE_STEPS` have passed since it applied (else None); its parts' misses
        are counted or reset."""
        expected = self.expected
        if expected is None or max_step < expected.apply_at_step + SETTLE_STEPS or step_seconds <= 0:
            return None
        judged = Judged(
            expected.epoch, expected.parts, expected.predicted_gain, 1.0 - step_seconds / expected.step_seconds
        )
        for part in expected.parts:
            self.misses[part] = 0 if judged.paid else min(self.max_misses, self.misses.get(part, 0) + 1)
        self.expected, self.last = None, judged
        return judged

    def min_gain_scale(self) -> dict[str, float]:
        """Per part that moves something (BACKED_OFF), what the job's minimum gain is multiplied by before that
        part is planned again."""
        return {part: 2.0**misses for part, misses in self.misses.items() if misses and part in BACKED_OFF}
