"""The jobs a rebalancer serves: their settings (from flags, or from the job's own description on the bus), their
load aggregators and plans, and the report the operator shows in `.status.rebalance` (pure: no NATS here).

What a job runs is what its rank 0 acknowledged (moeops.bus.plan_acks), not what the rebalancer published: a part
the trainer refused keeps the setting it ran before, and the next plan starts from that (`JobState.belief`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from moeops.bus.jobs import JobDescription
from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_acks import STARTED, PlanAck, RunningParts
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.bus.reports import RebalanceReport, measured_utilization

from .layout import JobLayout
from .load import DEFAULT_SMOOTHING, LoadAggregator
from .outcomes import Expected, PlanOutcomes
from .policy import DEFAULT_APPLY_MARGIN_STEPS, Hysteresis, with_lead_time
from .replan import ReplanOutcome, ReplanSettings, replan_outcome
from .stages import LayerCosts

JobKey = tuple[str, str]
"""(namespace, job)."""
PUBLISHED_KEPT: Final = 16
"""Plans remembered by epoch, for the parts an acknowledgement says run (older ones: the newest plan's)."""


@dataclass(frozen=True)
class JobSettings:
    """What the planner needs to know about one job beyond its metrics."""

    namespace: str
    job: str
    global_batch: int
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    stage_layers: tuple[tuple[int, int], ...] = ((0, 1),)
    """The job's current pipeline layout, carried into its first plan (later plans keep the previous one's)."""
    max_sequences_per_rank: int | None = None
    min_samples: int = 5
    """Steps every rank must have reported before a plan: one step's timing is too noisy to act on."""
    smoothing: float = DEFAULT_SMOOTHING
    layout: JobLayout | None = None
    """The job's parallel layout; None: pure data parallelism over `stage_layers`' layers."""

    @property
    def key(self) -> JobKey:
        return (self.namespace, self.job)

    @classmethod
    def from_description(
        cls,
        description: JobDescription,
        *,
        min_samples: int = 5,
        apply_margin_steps: int = DEFAULT_APPLY_MARGIN_STEPS,
    ) -> JobSettings:
        """Settings from what the job's rank 0 wrote about itself; `min_samples` and `apply_margin_steps` are the
        rebalancer's own (its flags), not the job's."""
        stage_layers = tuple((start, stop) for start, stop in description.stage_layers)
        return cls(
            namespace=description.namespace,
            job=description.job,
            global_batch=description.global_batch,
            hysteresis=Hysteresis(
                min_gain=description.min_gain,
                interval_steps=description.interval_steps,
                enabled=description.rebalance_enabled,
                data_interval_steps=description.data_interval_steps,
                apply_margin_steps=apply_margin_steps,
            ),
            stage_layers=stage_layers,
            min_samples=min_samples,
            layout=JobLayout(
                pipeline=description.pipeline,
                tensor=description.tensor,
                expert=description.expert,
                layers=description.layers,
                experts=description.experts,
                params_per_expert=description.params_per_expert,
                spare_slots=description.spare_slots,
            ),
        )

    def replan_settings(
        self,
        hysteresis: Hysteresis,
        min_gain_scale: dict[str, float] | None = None,
        layer_costs: Sequence[float] = (),
    ) -> ReplanSettings:
        """The planner's knobs for one round, under `hysteresis` (the job's, adjusted for the round's lead time)
        and the closed loop's per-part back-off."""
        return ReplanSettings(
            namespace=self.namespace,
            job=self.job,
            global_batch=self.global_batch,
            hysteresis=hysteresis,
            stage_layers=self.stage_layers,
            max_sequences_per_rank=self.max_sequences_per_rank,
            min_samples=self.min_samples,
            layout=self.layout,
            min_gain_scale=min_gain_scale or {},
            layer_costs=tuple(layer_costs),
        )


@dataclass
class JobState:
    settings: JobSettings
    aggregator: LoadAggregator
    previous: RebalancePlan | None = None
    revision: int = 0
    """The plan's revision in the bucket (0: none stored), for a compare-and-set write."""
    current_shares: list[int] | None = None
    last_applied_step: int | None = None
    last_full_step: int | None = None
    """The apply step of the last plan whose round could re-plan every part (data shares alone re-plan more often:
    `Hysteresis.data_interval_steps`)."""
    reported_at: float = float("-inf")
    """Monotonic time of the last report written."""
    published: dict[int, RebalancePlan] = field(default_factory=dict)
    """The last PUBLISHED_KEPT plans by epoch."""
    ack: PlanAck | None = None
    """Rank 0's newest acknowledgement."""
    last_refusal: PlanAck | None = None
    """The newest acknowledgement that refused a part (the report shows it)."""
    outcomes: PlanOutcomes = field(default_factory=PlanOutcomes)
    """The closed loop: the plan being judged, and the parts backed off."""
    layer_costs: LayerCosts = field(default_factory=LayerCosts)
    """Per layer, the measured compute seconds (for stage splits), from the messages that carry them."""
    round_step_seconds: float = 0.0
    """The mean smoothed step time of the last round (what its plan's gain is measured against)."""

    @classmethod
    def of(cls, settings: JobSettings) -> JobState:
        return cls(settings, LoadAggregator(settings.smoothing))

    def next_outcome(self, now_unix_s: float) -> ReplanOutcome:
        """One planning round: judge the plan being judged (outcomes.py), then plan from what runs (`belief`)
        with the parts that did not pay backed off."""
        settings = self.settings
        snapshot = self.aggregator.snapshot()
        steps = [load.step_seconds for load in snapshot.ranks]
        self.round_step_seconds = math.fsum(steps) / len(steps) if steps else 0.0
        self.outcomes.judge(snapshot.max_step, self.round_step_seconds)
        previous, current_shares = self.belief()
        return replan_outcome(
            snapshot,
            settings.replan_settings(
                with_lead_time(settings.hysteresis, snapshot), self.outcomes.min_gain_scale(), self.layer_costs.seconds
            ),
            current_shares=current_shares,
            last_applied_step=self.last_applied_step,
            last_full_step=self.last_full_step,
            previous=previous,
            now_unix_s=now_unix_s,
        )

    def adopt(self, plan: RebalancePlan, revision: int, *, full: bool = True, parts: tuple[str, ...] = ()) -> None:
        """`plan` is the job's plan now; `full`: its round could re-plan every part (a plan found in the bucket
        counts as one: the interval of the slow parts then starts from it, the safe side); `parts`: what it
        changes, judged once it has run (a plan read back, not made here: none)."""
        self.outcomes.planned(Expected(plan.epoch, parts, plan.predicted_gain, self.round_step_seconds,
                                       plan.apply_at_step))  # fmt: skip
        self.previous, self.revision = plan, revision
        self.aggregator.restart_levels(plan.apply_at_step)  # the speeds measured before it ran another split
        self.published[plan.epoch] = plan
        for epoch in sorted(self.published)[:-PUBLISHED_KEPT]:
            del self.published[epoch]
        self.last_applied_step = plan.apply_at_step
        if full:
            self.last_full_step = plan.apply_at_step
        self.current_shares = sequences_from_fractions(plan.data_shares, self.settings.global_batch)

    @property
    def awaiting_ack(self) -> bool:
        """A plan is published that rank 0 has not acknowledged yet."""
        return self.previous is not None and (self.ack is None or self.ack.epoch < self.previous.epoch)

    def acknowledged(self, ack: PlanAck) -> None:
        """Take rank 0's acknowledgement (an older one than that held is ignored)."""
        if self.ack is not None and (ack.epoch, ack.step) < (self.ack.epoch, self.ack.step):
            return
        self.ack = ack
        if ack.refused:
            self.last_refusal = ack
        self.outcomes.acknowledged(ack.epoch, _running_from(ack.running, ack.epoch))

    def belief(self) -> tuple[RebalancePlan | None, list[int] | None]:
        """What to plan from: the plan the next one follows, its parts those that run, and the sequences per
        data-parallel replica that run. Until rank 0 acknowledges the newest plan, that plan (it will apply);
        then per part the setting of the plan the acknowledgement says runs: a refused part is not believed."""
        plan, ack = self.previous, self.ack
        if plan is None or ack is None or ack.epoch < plan.epoch:
            return plan, self.current_shares
        running = ack.running
        data, experts, stages = (
            self._running(epoch, plan) for epoch in (running.data, running.experts, running.stages)
        )
        believed = plan.model_copy(
            update={
                "expert_placement": [] if experts is None else experts.expert_placement,
                "stage_layers": list(self.settings.stage_layers) if stages is None else stages.stage_layers,
            }
        )
        current = None if data is None else sequences_from_fractions(data.data_shares, self.settings.global_batch)
        return believed, current

    def _running(self, epoch: int, newest: RebalancePlan) -> RebalancePlan | None:
        """The plan whose setting runs (None: the job's start); one no longer remembered: the newest plan."""
        return None if epoch == STARTED else self.published.get(epoch, newest)

    def report(self, now_unix_s: float) -> RebalanceReport | None:
        """The job as the rebalancer sees it now, or None before any rank has reported."""
        snapshot = self.aggregator.snapshot()
        if not snapshot.ranks:
            return None
        plan = self.previous
        return RebalanceReport(
            namespace=self.settings.namespace,
            job=self.settings.job,
            plan_epoch=None if plan is None else plan.epoch,
            apply_at_step=None if plan is None else plan.apply_at_step,
            predicted_gain=None if plan is None else plan.predicted_gain,
            utilization=measured_utilization(
                [load.compute_seconds for load in snapshot.ranks], [load.step_seconds for load in snapshot.ranks]
            ),
            world_size=max(1, snapshot.world_size),
            ranks_reporting=len(snapshot.ranks),
            last_step=max(0, snapshot.max_step),
            measured_at_unix_s=now_unix_s,
            refused_epoch=None if self.last_refusal is None else self.last_refusal.epoch,
            refusal="; ".join(self.last_refusal.refused) if self.last_refusal is not None else None,
        )


def _running_from(running: RunningParts, epoch: int) -> set[str]:
    """The parts whose setting runs from plan `epoch`."""
    return {part for part, since in running.model_dump().items() if since == epoch}
