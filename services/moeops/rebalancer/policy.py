"""Hysteresis and plan building: re-plan only when it is worth it, and make every rank switch at the same step.

A plan that would change the distribution for a small predicted gain costs more than it saves (the switch itself,
the noise in the measurements it was based on), and re-planning every step would chase that noise: hence a minimum
relative gain and a minimum interval between plans (`RebalanceSpec.min_gain`, `RebalanceSpec.interval_steps`).

Ranks read the plan asynchronously, so it carries the step at which all of them apply it: after the newest step any
rank has reported plus a safety margin long enough for the plan to reach every rank before that step starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.bus.messages import RebalancePlan

from .load import LoadSnapshot

DEFAULT_APPLY_MARGIN_STEPS = 2
"""Steps between the newest reported step and the switch: the step after the one some rank may already run. Time
for the plan to reach every rank comes from `with_lead_time` (at least APPLY_LEAD_S of the job's steps), so fast
steps get a longer margin. It was 5: every plan then ran 5 steps after the measurements it was made from, and on
the drifting trace of benchmarks/rebalance_product_sim.py a data split loses about 1% of utilization a step
(128 GPUs, data shares every step: 0.922 with a margin of 2, 0.88 with 5)."""
DEFAULT_DATA_INTERVAL_STEPS = 2
"""Least steps between data-share plans when the job does not say (`dataIntervalSteps` unset): a re-split moves
no weights, so it may follow a straggler within a few steps; the levels restart at each plan
(`LoadAggregator.restart_levels`), so 2 steps give it two measurements of the split that runs. It was
`intervalSteps` (50): a rank cut for a noisy neighbour waited 50 steps for its share back."""


APPLY_LEAD_S = 2.0
"""Least time between a plan's publication and its step: a round (0.2 s), rank 0's poll (0.5 s), the broadcast."""
MAX_APPLY_MARGIN = 1000


class Verdict(Enum):
    PLAN = "plan"
    DISABLED = "disabled"
    TOO_SOON = "too_soon"
    """Inside the minimum interval since the last plan's switch."""
    GAIN_TOO_SMALL = "gain_too_small"


@dataclass(frozen=True)
class Hysteresis:
    min_gain: float = 0.05
    interval_steps: int = 50
    apply_margin_steps: int = DEFAULT_APPLY_MARGIN_STEPS
    enabled: bool = True
    data_interval_steps: int | None = None
    """Least steps between plans that change the data shares alone (nothing moves: they may follow stragglers
    closely); None: DEFAULT_DATA_INTERVAL_STEPS. Never more than `interval_steps`. Expert placement and stages
    still wait `interval_steps`."""

    @property
    def data_interval(self) -> int:
        return min(self.interval_steps, self.data_interval_steps or DEFAULT_DATA_INTERVAL_STEPS)

    @property
    def forecast_steps(self) -> tuple[float, float]:
        """The steps a plan runs over, counted from the newest measured step: it applies `apply_margin_steps`
        on and is not replaced for `interval_steps` (the first and the last of them)."""
        return self.forecast_window(self.interval_steps)

    def forecast_window(self, interval: int) -> tuple[float, float]:
        """The first and last steps, from the newest measured one, a plan replaced after `interval` runs over."""
        return float(self.apply_margin_steps), float(self.apply_margin_steps + interval - 1)

    @classmethod
    def from_spec(cls, spec: RebalanceSpec, apply_margin_steps: int = DEFAULT_APPLY_MARGIN_STEPS) -> Hysteresis:
        return cls(spec.min_gain, spec.interval_steps, apply_margin_steps, spec.enabled, spec.data_interval_steps)

    def verdict(
        self, *, current_step: int, last_applied_step: int | None, predicted_gain: float, interval: int | None = None
    ) -> Verdict:
        """Whether to publish a plan now. The interval (default `interval_steps`) counts from the step the last
        plan took effect: the measurements before it describe the old distribution."""
        if not self.enabled:
            return Verdict.DISABLED
        interval = self.interval_steps if interval is None else interval
        if last_applied_step is not None and current_step - last_applied_step < interval:
            return Verdict.TOO_SOON
        # Strictly more than min_gain: with min_gain 0 an exact tie (no gain at all) still changes nothing.
        if predicted_gain <= self.min_gain:
            return Verdict.GAIN_TOO_SMALL
        return Verdict.PLAN


def build_plan(
    *,
    namespace: str,
    job: str,
    previous: RebalancePlan | None,
    max_step: int,
    apply_margin_steps: int,
    data_shares: Sequence[float],
    stage_layers: Sequence[tuple[int, int]],
    expert_placement: Sequence[Sequence[Sequence[int]]],
    predicted_gain: float,
    now_unix_s: float,
) -> RebalancePlan:
    """The next plan: epoch one past the previous plan's (0 for the first), applied at max_step + margin."""
    return RebalancePlan(
        namespace=namespace,
        job=job,
        epoch=0 if previous is None else previous.epoch + 1,
        apply_at_step=max_step + apply_margin_steps,
        data_shares=list(data_shares),
        stage_layers=list(stage_layers),
        expert_placement=[[list(ranks) for ranks in layer] for layer in expert_placement],
        predicted_gain=predicted_gain,
        created_at_unix_s=now_unix_s,
    )


def with_lead_time(hysteresis: Hysteresis, snapshot: LoadSnapshot) -> Hysteresis:
    """The hysteresis with an apply margin of at least APPLY_LEAD_S of the job's steps: with fast steps, a
    fixed number of steps is less time than a plan needs to reach rank 0 (a poll every 0.5 s)."""
    seconds = [load.step_seconds for load in snapshot.ranks if load.step_seconds > 0]
    if not seconds:
        return hysteresis
    steps = math.ceil(APPLY_LEAD_S / (sum(seconds) / len(seconds)))
    return replace(hysteresis, apply_margin_steps=max(hysteresis.apply_margin_steps, min(steps, MAX_APPLY_MARGIN)))
