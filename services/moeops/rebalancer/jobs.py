"""The jobs a rebalancer serves: their settings (from flags, or from the job's own description on the bus), their
load aggregators and plans, and the report the operator shows in `.status.rebalance` (pure: no NATS here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from moeops.bus.jobs import JobDescription
from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.bus.reports import RebalanceReport, measured_utilization

from .layout import JobLayout
from .load import DEFAULT_SMOOTHING, LoadAggregator
from .policy import DEFAULT_APPLY_MARGIN_STEPS, Hysteresis
from .replan import ReplanSettings

JobKey = tuple[str, str]
"""(namespace, job)."""


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

    def replan_settings(self, hysteresis: Hysteresis) -> ReplanSettings:
        """The planner's knobs for one round, under `hysteresis` (the job's, adjusted for the round's lead time)."""
        return ReplanSettings(
            namespace=self.namespace,
            job=self.job,
            global_batch=self.global_batch,
            hysteresis=hysteresis,
            stage_layers=self.stage_layers,
            max_sequences_per_rank=self.max_sequences_per_rank,
            min_samples=self.min_samples,
            layout=self.layout,
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

    @classmethod
    def of(cls, settings: JobSettings) -> JobState:
        return cls(settings, LoadAggregator(settings.smoothing))

    def adopt(self, plan: RebalancePlan, revision: int, *, full: bool = True) -> None:
        """`plan` is the job's plan now; `full`: its round could re-plan every part (a plan found in the bucket
        counts as one: the interval of the slow parts then starts from it, the safe side)."""
        self.previous, self.revision = plan, revision
        self.last_applied_step = plan.apply_at_step
        if full:
            self.last_full_step = plan.apply_at_step
        self.current_shares = sequences_from_fractions(plan.data_shares, self.settings.global_batch)

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
        )
