"""Hysteresis and plan building: no plan for a small gain or too soon; epochs advance; all ranks switch together."""

from __future__ import annotations

from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.bus.messages import RebalancePlan
from moeops.rebalancer.policy import Hysteresis, Verdict, build_plan


def test_no_plan_when_the_gain_is_below_min_gain() -> None:
    policy = Hysteresis(min_gain=0.05, interval_steps=10)
    assert policy.verdict(current_step=100, last_applied_step=None, predicted_gain=0.04) is Verdict.GAIN_TOO_SMALL
    assert policy.verdict(current_step=100, last_applied_step=None, predicted_gain=0.05) is Verdict.GAIN_TOO_SMALL
    assert policy.verdict(current_step=100, last_applied_step=None, predicted_gain=0.06) is Verdict.PLAN


def test_no_plan_inside_the_interval_whatever_the_gain() -> None:
    policy = Hysteresis(min_gain=0.05, interval_steps=10)
    assert policy.verdict(current_step=59, last_applied_step=50, predicted_gain=0.9) is Verdict.TOO_SOON
    assert policy.verdict(current_step=60, last_applied_step=50, predicted_gain=0.9) is Verdict.PLAN


def test_policy_from_the_training_job_spec() -> None:
    policy = Hysteresis.from_spec(RebalanceSpec(enabled=False, interval_steps=7, min_gain=0.2))
    assert (policy.min_gain, policy.interval_steps, policy.enabled) == (0.2, 7, False)
    assert policy.verdict(current_step=100, last_applied_step=None, predicted_gain=0.9) is Verdict.DISABLED


def plan_after(previous: RebalancePlan | None, max_step: int) -> RebalancePlan:
    return build_plan(
        namespace="ns",
        job="job",
        previous=previous,
        max_step=max_step,
        apply_margin_steps=5,
        data_shares=[0.25, 0.75],
        stage_layers=[(0, 3), (3, 8)],
        expert_placement=[[[0], [1, 0], [1]]],
        predicted_gain=0.2,
        now_unix_s=1.0,
    )


def test_plans_advance_the_epoch_and_switch_after_the_newest_step() -> None:
    first = plan_after(None, max_step=40)
    assert (first.epoch, first.apply_at_step) == (0, 45)
    second = plan_after(first, max_step=90)
    assert (second.epoch, second.apply_at_step) == (1, 95)
    assert second.expert_placement == [[[0], [1, 0], [1]]]


def test_a_plan_is_forecast_over_the_steps_it_will_run() -> None:
    # Applied 5 steps after the newest measured one, then kept for 10 steps: steps 5 to 14 on.
    assert Hysteresis(min_gain=0.05, interval_steps=10, apply_margin_steps=5).forecast_steps == (5.0, 14.0)
