"""One starting placement for the trainer and the rebalancer: with spare slots, the service's plans are ones the
trainer applies (before, it assumed one copy per expert and the trainer refused every expert plan)."""

from __future__ import annotations

import pytest

from bus_records import worker_metrics
from moeops.bus.expert_start import starting_replicas
from moeops.rebalancer.layout import JobLayout
from moeops.rebalancer.load import LoadAggregator, LoadSnapshot
from moeops.rebalancer.policy import Hysteresis
from moeops.rebalancer.replan import ReplanSettings, replan_outcome, starting_placement
from moeops.trainer.expert_placement import Placement
from moeops.trainer.plans import TrainerShape, interpret


@pytest.mark.parametrize(("experts", "ranks", "spare"), [(4, 2, 0), (4, 2, 1), (8, 4, 3), (16, 4, 2), (8, 8, 7)])
def test_the_trainer_starts_where_the_rebalancer_thinks_it_does(experts: int, ranks: int, spare: int) -> None:
    trainer = Placement.contiguous(experts, ranks, spare)
    service = starting_placement(3, experts, ranks, spare)
    assert all(layer == [trainer.holders(e) for e in range(experts)] for layer in service)
    assert service[0] == starting_replicas(experts, ranks, spare)
    # And the trainer reads the service's form back as the placement it runs (same holders, same slot count).
    back = Placement.from_replicas(service[0], ranks, experts // ranks + spare)
    assert [back.holders(e) for e in range(experts)] == [trainer.holders(e) for e in range(experts)]


def test_too_many_spare_slots_are_refused_by_both_ends_alike() -> None:
    with pytest.raises(ValueError, match="spare slots"):
        Placement.contiguous(4, 2, spare=3)
    with pytest.raises(ValueError, match="spare slots"):
        starting_placement(1, 4, 2, spare=3)


def _snapshot(world: int, experts: list[list[int]], start: int = 0) -> LoadSnapshot:
    aggregator = LoadAggregator()
    for step in range(start, start + 6):
        for rank in range(world):
            aggregator.ingest(worker_metrics(rank, step, job="j", world_size=world, tokens_per_expert=experts))
    return aggregator.snapshot()


SPARE = JobLayout(expert=4, layers=3, experts=8, params_per_expert=3 * 64 * 128, spare_slots=1)
SHAPE = TrainerShape(
    global_batch=16, data=4, micro_batches=1, pipeline=1, expert=4, layers=3, experts=8, stage_layers=((0, 3),),
    spare_slots=1,
)  # fmt: skip
BALANCED = [100] * 8
HOT = [2000, 100, 100, 100, 100, 100, 100, 100]


def test_an_expert_plan_with_spare_slots_is_applied_by_the_trainer_layers_kept_included() -> None:
    # Layer 0 is hot and moves; layers 1 and 2 are balanced and keep the starting placement (with its replicas).
    snapshot = _snapshot(4, [HOT, BALANCED, BALANCED])
    settings = ReplanSettings("ns", "j", 16, Hysteresis(0.01, 10, 5), stage_layers=[(0, 3)], layout=SPARE)
    outcome = replan_outcome(snapshot, settings, current_shares=None, last_applied_step=None, previous=None,
                             now_unix_s=0.0)  # fmt: skip
    assert outcome.plan is not None and "experts" in outcome.parts
    placement = outcome.plan.expert_placement
    assert placement[1:] == starting_placement(2, 8, 4, 1)  # not moved: as the trainer holds them
    changes = interpret(outcome.plan, SHAPE)
    assert changes.refused == () and changes.placements is not None
    assert changes.placements[1] == Placement.from_replicas(starting_replicas(8, 4, 1), 4, 3)
    assert len(changes.placements[0].holders(0)) > 1  # the hot expert has more replicas than at the start

    # The next plan starts from that one (replicas and all), and the trainer applies it too.
    later = _snapshot(4, [BALANCED, HOT, BALANCED], start=40)
    again = replan_outcome(later, settings, current_shares=list(outcome.sequences or ()), last_applied_step=10,
                           previous=outcome.plan, now_unix_s=1.0)  # fmt: skip
    assert again.plan is not None and "experts" in again.parts
    assert interpret(again.plan, SHAPE).refused == ()
