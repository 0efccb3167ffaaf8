"""One planning round: a straggler gets a smaller share; the hysteresis keeps plans from thrashing."""

from __future__ import annotations

import pytest

from bus_records import worker_metrics
from moeops.bus.messages import RebalancePlan, WorkerMetrics
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.rebalancer.load import LoadAggregator, LoadSnapshot
from moeops.rebalancer.policy import Hysteresis, Verdict
from moeops.rebalancer.replan import ReplanSettings, replan_outcome

WORLD = 4
BATCH = 32


def metrics(rank: int, step: int, *, speed: float = 1.0) -> WorkerMetrics:
    seconds = 1.0 / speed
    return worker_metrics(
        rank, step, world_size=WORLD, tokens=8000, step_seconds=max(seconds, 1.0 / 0.6), compute_seconds=seconds
    )


def snapshot(speeds: list[float], steps: int = 10, ranks: int = WORLD) -> LoadSnapshot:
    aggregator = LoadAggregator()
    for step in range(steps):
        for rank in range(ranks):
            aggregator.ingest(metrics(rank, step, speed=speeds[rank]))
    return aggregator.snapshot()


ROUND_ARGUMENTS = ("current_shares", "last_applied_step", "previous", "now_unix_s", "last_full_step")


def plan_for(snap: LoadSnapshot, hysteresis: Hysteresis | None = None, **changes: object) -> RebalancePlan | None:
    arguments: dict[str, object] = {
        "global_batch": BATCH,
        "current_shares": None,
        "hysteresis": hysteresis or Hysteresis(min_gain=0.05, interval_steps=20, apply_margin_steps=5),
        "last_applied_step": None,
        "previous": None,
        "namespace": "ns",
        "job": "job",
        "now_unix_s": 123.0,
        "stage_layers": [(0, 4)],
    } | changes
    settings = ReplanSettings(**{k: v for k, v in arguments.items() if k not in ROUND_ARGUMENTS})  # type: ignore[arg-type]
    round_arguments = {k: v for k, v in arguments.items() if k in ROUND_ARGUMENTS}
    return replan_outcome(snap, settings, **round_arguments).plan  # type: ignore[arg-type]


def test_a_straggler_gets_a_smaller_share_and_the_fast_ranks_more() -> None:
    plan = plan_for(snapshot([1.0, 1.0, 0.6, 1.0]))
    assert plan is not None
    assert plan.epoch == 0
    assert plan.apply_at_step == 9 + 5
    assert sum(plan.data_shares) == pytest.approx(1.0)
    slow = plan.data_shares[2]
    assert all(plan.data_shares[r] > 0.25 > slow for r in (0, 1, 3))
    assert sequences_from_fractions(plan.data_shares, BATCH) == [9, 9, 5, 9]
    # 8 sequences at 0.6× take 13.3 units; 9 at 1× take 9: about a third faster.
    assert plan.predicted_gain == pytest.approx(1 - 9 / (8 / 0.6))
    assert plan.stage_layers == [(0, 4)]
    assert plan.created_at_unix_s == 123.0


def test_the_epoch_follows_the_previous_plan_and_its_layout_is_carried_over() -> None:
    snap = snapshot([1.0, 1.0, 0.6, 1.0])
    first = plan_for(snap)
    assert first is not None
    previous = first.model_copy(update={"stage_layers": [(0, 2), (2, 4)], "expert_placement": [[[0], [1]]]})
    second = plan_for(snap, previous=previous)
    assert second is not None
    assert second.epoch == 1
    assert second.stage_layers == [(0, 2), (2, 4)]
    assert second.expert_placement == [[[0], [1]]]


def test_no_plan_inside_the_interval() -> None:
    snap = snapshot([1.0, 1.0, 0.6, 1.0], steps=10)  # newest step 9
    every_20 = Hysteresis(min_gain=0.05, interval_steps=20, apply_margin_steps=5, data_interval_steps=20)
    assert plan_for(snap, every_20, last_applied_step=0) is None  # 9 steps since the switch < 20
    assert plan_for(snap, every_20, last_applied_step=-11) is not None  # 20 steps since: allowed
    # Unset, the data shares alone may be re-planned 2 steps after the last switch (DEFAULT_DATA_INTERVAL_STEPS).
    assert plan_for(snap, last_applied_step=8) is None
    assert plan_for(snap, last_applied_step=7) is not None


def test_no_plan_below_the_minimum_gain() -> None:
    assert plan_for(snapshot([1.0, 1.0, 1.0, 1.0])) is None  # already balanced
    # The straggler's plan is in force: re-planning from it would gain nothing.
    outcome = replan_outcome(
        snapshot([1.0, 1.0, 0.6, 1.0]),
        ReplanSettings("ns", "job", BATCH, Hysteresis(min_gain=0.05, interval_steps=1)),
        current_shares=[9, 9, 5, 9],
        last_applied_step=None,
        previous=None,
        now_unix_s=0.0,
    )
    assert outcome.plan is None
    assert outcome.verdict is Verdict.GAIN_TOO_SMALL
    # A gain of ~32% is still too small for min_gain 0.5.
    assert plan_for(snapshot([1.0, 1.0, 0.6, 1.0]), Hysteresis(min_gain=0.5, interval_steps=1)) is None


def test_disabled_or_incomplete_gives_no_plan() -> None:
    assert plan_for(snapshot([1.0, 1.0, 0.6, 1.0]), Hysteresis(enabled=False)) is None
    incomplete = replan_outcome(
        snapshot([1.0, 1.0, 0.6, 1.0], ranks=3),  # rank 3 never reported
        ReplanSettings("ns", "job", BATCH, Hysteresis()),
        current_shares=None,
        last_applied_step=None,
        previous=None,
        now_unix_s=0.0,
    )
    assert incomplete.plan is None and incomplete.verdict is None
    assert plan_for(LoadAggregator().snapshot()) is None
    assert plan_for(snapshot([1.0, 1.0, 0.6, 1.0], steps=4), min_samples=5) is None
    assert plan_for(snapshot([1.0, 1.0, 0.6, 1.0], steps=5), min_samples=5) is not None


def test_a_memory_cap_limits_the_fast_ranks() -> None:
    plan = plan_for(snapshot([1.0, 1.0, 0.6, 1.0]), max_sequences_per_rank=8)
    assert plan is None  # capped at the even split: nothing to gain
