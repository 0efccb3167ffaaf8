"""The planner's expert and pipeline parts, and how ranks map to stages and data-parallel replicas."""

from __future__ import annotations

import pytest

from bus_records import worker_metrics
from moeops.rebalancer.layout import JobLayout, replica_rates, stage_times
from moeops.rebalancer.load import LoadAggregator, LoadSnapshot
from moeops.rebalancer.policy import Hysteresis, Verdict
from moeops.rebalancer.replan import ReplanSettings, expert_part, replan_outcome, stage_part, starting_placement

HOT = [[900.0, 800.0, 10.0, 10.0, 50.0, 50.0, 40.0, 40.0]]
"""One layer, 8 experts, the two hottest on rank 0 under the contiguous placement over 4 ranks."""
SMALL_EXPERTS = JobLayout(expert=4, layers=1, experts=8, params_per_expert=3 * 64 * 128)


def test_ranks_map_to_stages_and_replicas_as_the_trainer_mesh_lays_them_out() -> None:
    layout = JobLayout(pipeline=2, tensor=2)  # 8 ranks: 2 stages × 2 replicas × 2 tensor
    assert layout.data(8) == 2
    assert [layout.stage_of(r, 8) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [layout.replica_of(r, 8) for r in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert replica_rates([4.0, 1.0, 3.0, 3.0, 5.0, 5.0, 5.0, 5.0], layout) == [1.0, 3.0]
    assert stage_times([1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0], layout) == [2.0, 3.0]
    with pytest.raises(ValueError, match="not pipeline 2"):
        layout.data(6)


def test_hot_experts_are_spread_when_the_move_pays_off() -> None:
    current = starting_placement(1, 8, 4)
    assert current == [[[0], [0], [1], [1], [2], [2], [3], [3]]]
    placement, gain = expert_part(HOT, SMALL_EXPERTS, current, step_seconds=1.0, steps_until_next_plan=50)
    assert placement is not None and 0 < gain <= SMALL_EXPERTS.expert_time_share
    holders = [ranks[0] for ranks in placement[0]]
    assert holders[0] != holders[1]  # the two hot experts no longer share a rank
    assert sorted(holders.count(rank) for rank in range(4)) == [2, 2, 2, 2]


def test_a_move_that_costs_more_than_it_saves_is_not_made() -> None:
    huge = JobLayout(expert=4, layers=1, experts=8, params_per_expert=10**10, link_bytes_per_s=1e9)
    current = starting_placement(1, 8, 4)
    assert expert_part(HOT, huge, current, step_seconds=1.0, steps_until_next_plan=50) == (None, 0.0)


def test_a_balanced_placement_is_left_alone() -> None:
    current = starting_placement(1, 8, 4)
    even = [[100.0] * 8]
    assert expert_part(even, SMALL_EXPERTS, current, step_seconds=1.0, steps_until_next_plan=50) == (None, 0.0)


def test_a_slow_stage_gives_layers_away() -> None:
    layout = JobLayout(pipeline=2, layers=8)
    # 2 ranks (one per stage); stage 0 takes 3 s for 4 layers, stage 1 1 s for 4.
    stages, gain = stage_part([3.0, 1.0], layout, [(0, 4), (4, 8)])
    assert stages is not None and stages[0][1] < 4
    assert stages == ((0, 3), (3, 8))  # 3 × 0.75 s against 0.75 s + 4 × 0.25 s
    assert gain == pytest.approx(1 - 2.25 / 3.0)
    assert stage_part([1.0, 1.0], layout, [(0, 4), (4, 8)]) == (None, 0.0)


def _snapshot(world: int, experts: list[list[int]], compute: list[float]) -> LoadSnapshot:
    aggregator = LoadAggregator()
    for step in range(6):
        for rank in range(world):
            aggregator.ingest(
                worker_metrics(rank, step, job="j", world_size=world, step_seconds=max(compute),
                               compute_seconds=compute[rank], tokens_per_expert=experts)
            )  # fmt: skip
    return aggregator.snapshot()


def test_one_round_plans_expert_placement_and_keeps_even_shares() -> None:
    snap = _snapshot(4, [[int(v) for v in HOT[0]]], [1.0, 1.0, 1.0, 1.0])
    settings = ReplanSettings("ns", "j", 16, Hysteresis(0.05, 10, 5), stage_layers=[(0, 1)], layout=SMALL_EXPERTS)
    outcome = replan_outcome(snap, settings, current_shares=None, last_applied_step=None, previous=None,
                             now_unix_s=0.0)  # fmt: skip
    assert outcome.plan is not None and outcome.parts == ("experts",)
    assert outcome.sequences == (4, 4, 4, 4) and outcome.plan.data_shares == [0.25] * 4
    assert len(outcome.plan.expert_placement) == 1 and outcome.plan.predicted_gain > 0.05


def test_one_round_re_splits_a_pipeline_and_leaves_the_shares() -> None:
    layout = JobLayout(pipeline=2, layers=8)
    snap = _snapshot(4, [], [3.0, 3.0, 1.0, 1.0])  # 2 stages × 2 replicas: stage 0 is slow
    settings = ReplanSettings("ns", "j", 16, Hysteresis(0.05, 10, 5), stage_layers=[(0, 4), (4, 8)], layout=layout)
    outcome = replan_outcome(snap, settings, current_shares=None, last_applied_step=None, previous=None,
                             now_unix_s=0.0)  # fmt: skip
    assert outcome.plan is not None and outcome.parts == ("stages",)
    assert outcome.plan.stage_layers[0][1] < 4 and outcome.plan.data_shares == [0.5, 0.5]


def test_spare_slots_replicate_the_hottest_expert_and_current_replicas_are_read() -> None:
    layout = JobLayout(expert=4, layers=1, experts=8, params_per_expert=3 * 64 * 128, spare_slots=1)
    skewed = [[2000.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0]]
    placement, gain = expert_part(skewed, layout, starting_placement(1, 8, 4), step_seconds=1.0,
                                  steps_until_next_plan=50)  # fmt: skip
    assert placement is not None and gain > 0
    assert len(placement[0][0]) > 1  # the hot expert now has replicas on several ranks
    assert sum(len(ranks) for ranks in placement[0]) == 8 + 4  # every slot, spare ones included, is filled
    # Planned again from that placement (replicas and all), nothing is left to gain.
    assert expert_part(skewed, layout, placement, step_seconds=1.0, steps_until_next_plan=50) == (None, 0.0)


def test_layers_are_gated_one_by_one_and_a_layer_that_does_not_pay_keeps_its_placement() -> None:
    layout = JobLayout(expert=4, layers=2, experts=8, params_per_expert=3 * 64 * 128)
    balanced = [100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0]
    current = starting_placement(2, 8, 4)
    placement, gain = expert_part([HOT[0], balanced], layout, current, step_seconds=1.0, steps_until_next_plan=50)
    assert placement is not None and gain > 0
    assert placement[1] == current[1]  # nothing to gain there: not moved
    assert placement[0] != current[0]


def test_a_slow_ep_group_gives_sequences_to_the_other_group() -> None:
    # 8 replicas in 2 EP groups of 4; every GPU of the second group takes twice as long; experts balanced.
    layout = JobLayout(expert=4, layers=1, experts=8, params_per_expert=3 * 64 * 128)
    snap = _snapshot(8, [[100] * 8], [1.0] * 4 + [2.0] * 4)
    settings = ReplanSettings("ns", "j", 64, Hysteresis(0.05, 10, 5), stage_layers=[(0, 1)], layout=layout)
    outcome = replan_outcome(snap, settings, current_shares=None, last_applied_step=None, previous=None,
                             now_unix_s=0.0)  # fmt: skip
    assert outcome.plan is not None and outcome.parts == ("data",) and outcome.sequences is not None
    fast, slow = sum(outcome.sequences[:4]), sum(outcome.sequences[4:])
    assert fast + slow == 64
    # Half of a GPU's time is expert work for its whole group (expert_time_share 0.5), so per-GPU shares (which
    # can only shrink the dense half) would leave the slow group at 32 sequences; the group takes far fewer.
    assert slow <= 24 < 40 <= fast


def test_data_shares_re_plan_between_the_expert_re_plans() -> None:
    # A straggler and hot experts; experts may move every 20 steps, the data split every 2.
    hysteresis = Hysteresis(0.01, 20, 1, data_interval_steps=2)
    snap = _snapshot(4, [[int(v) for v in HOT[0]]], [1.0, 1.0, 2.0, 1.0])  # newest step: 5
    settings = ReplanSettings("ns", "j", 16, hysteresis, stage_layers=[(0, 1)], layout=SMALL_EXPERTS)
    round_args = {"current_shares": None, "previous": None, "now_unix_s": 0.0}
    too_soon = replan_outcome(snap, settings, last_applied_step=4, last_full_step=4, **round_args)  # type: ignore[arg-type]
    assert too_soon.plan is None and too_soon.verdict is Verdict.TOO_SOON
    data_only = replan_outcome(snap, settings, last_applied_step=3, last_full_step=3, **round_args)  # type: ignore[arg-type]
    assert data_only.plan is not None and data_only.parts == ("data",) and not data_only.full
    assert data_only.plan.expert_placement == []  # the previous (none): experts wait for the full interval
    full = replan_outcome(snap, settings, last_applied_step=3, last_full_step=5 - 20, **round_args)  # type: ignore[arg-type]
    assert full.plan is not None and full.full and "experts" in full.parts


def test_the_data_interval_cannot_exceed_the_interval() -> None:
    assert Hysteresis(0.05, 10, data_interval_steps=50).data_interval == 10
    assert Hysteresis(0.05, 10).data_interval == 2  # unset: policy.DEFAULT_DATA_INTERVAL_STEPS
    assert Hysteresis(0.05, 1).data_interval == 1
    assert Hysteresis(0.05, 10, data_interval_steps=1).forecast_window(1) == (2.0, 2.0)  # the default margin
