"""Replicated (hot) experts in spare slots: placements with more slots than experts, how each source rank's
rows are split over an expert's replicas, and plans that replicate (pure: no process group)."""

from __future__ import annotations

import pytest
import torch

from moeops.bus.messages import RebalancePlan
from moeops.trainer.expert_placement import Placement, rows_by_slot, slot_counts
from moeops.trainer.plans import TrainerShape, interpret

SHAPE = TrainerShape(
    global_batch=32, data=4, micro_batches=1, pipeline=1, expert=2, layers=2, experts=4, stage_layers=((0, 2),)
)
SPARE = TrainerShape(**{**SHAPE.__dict__, "spare_slots": 1})
HOT = [[[0, 1], [0], [1], [1, 0]], [[1], [0, 1], [0], [1, 0]]]
"""With one spare slot per rank (3 slots): layer 0 replicates experts 0 and 3, layer 1 experts 1 and 3."""


def plan(expert_placement: list[list[list[int]]]) -> RebalancePlan:
    return RebalancePlan(
        namespace="ns",
        job="j",
        epoch=3,
        apply_at_step=12,
        data_shares=[0.25] * 4,
        stage_layers=[(0, 2)],
        expert_placement=expert_placement,
        predicted_gain=0.2,
        created_at_unix_s=0.0,
    )


def test_spare_slots_start_with_replicas_of_the_next_ranks_experts() -> None:
    start = Placement.contiguous(4, 2, spare=1)
    assert start.expert_of_slot.tolist() == [0, 1, 2, 2, 3, 0]
    assert start.per_rank == 3 and start.experts == 4 and start.replicated and not start.identity
    assert start.slot_of_expert.tolist() == [0, 1, 2, 4]  # the first slot of each expert
    assert start.slots_of(2) == [2, 3] and start.holders(0) == [0, 1] and start.rank_of(0) == 0
    wide = Placement.contiguous(8, 4, spare=3)
    for rank in range(4):
        held = wide.experts_on(rank).tolist()
        assert held[:2] == [2 * rank, 2 * rank + 1] and len(set(held)) == 5  # own first, all distinct
    assert Placement.contiguous(4, 2, spare=0) == Placement(range(4), 2) and Placement(range(4), 2).identity
    with pytest.raises(ValueError, match="at most 2"):
        Placement.contiguous(4, 2, spare=3)  # a rank would need an expert twice


def test_a_placement_holds_every_expert_at_most_once_per_rank() -> None:
    assert Placement([0, 1, 2, 2, 3, 0], ranks=2, experts=4).replicated
    with pytest.raises(ValueError, match="not a placement"):
        Placement([0, 0, 1, 2, 3, 1], ranks=2, experts=4)  # expert 0 twice on rank 0
    with pytest.raises(ValueError, match="not a placement"):
        Placement([0, 1, 2, 0, 1, 2], ranks=2, experts=4)  # expert 3 nowhere


def test_each_source_sends_an_experts_rows_to_one_replica_preferring_its_own() -> None:
    start = Placement.contiguous(4, 2, spare=1)
    assert start.route(0).tolist() == [0, 1, 2, 4]  # rank 0 holds 0, 1, 2: its own; expert 3 only on rank 1
    assert start.route(1).tolist() == [5, 1, 3, 4]
    # Expert 0 on ranks 0 and 1 of 4: the two other ranks spread over the two replicas.
    four = Placement([0, 1, 0, 2, 3, 4, 5, 6], ranks=4, experts=7)
    assert [int(four.route(source)[0]) for source in range(4)] == [0, 2, 0, 2]
    assert [int(four.route(source)[6]) for source in range(4)] == [7, 7, 7, 7]  # one replica: its only slot


def test_the_rows_of_a_replicated_expert_are_split_over_its_replicas() -> None:
    placement = Placement.contiguous(4, 2, spare=1)  # slots: 0 1 2 | 2 3 0
    counts_E = torch.tensor([2, 1, 3, 1])  # rows 0-1 expert 0, row 2 expert 1, rows 3-5 expert 2, row 6 expert 3
    assert slot_counts(counts_E, placement, 0).tolist() == [2, 1, 3, 0, 1, 0]  # rank 0 keeps 0 and 2 local
    assert rows_by_slot(counts_E, placement, 0).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert slot_counts(counts_E, placement, 1).tolist() == [0, 1, 0, 3, 1, 2]  # rank 1 runs its 2 and 0
    assert rows_by_slot(counts_E, placement, 1).tolist() == [2, 3, 4, 5, 6, 0, 1]


def test_every_row_reaches_one_slot_of_its_expert_from_every_source() -> None:
    torch.manual_seed(0)
    placement = Placement.from_replicas([[0, 2], [1], [2, 1, 0], [0], [1, 2], [2], [0, 1]], ranks=3, per_rank=4)
    for source in range(3):
        counts_E = torch.randint(0, 5, (7,))
        experts_A = torch.repeat_interleave(torch.arange(7), counts_E)
        sizes = slot_counts(counts_E, placement, source)
        perm = rows_by_slot(counts_E, placement, source)
        assert sorted(perm.tolist()) == list(range(int(counts_E.sum())))  # a permutation
        slot_of_row = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
        assert torch.equal(placement.expert_of_slot[slot_of_row], experts_A[perm])  # each row at its expert
        assert all(int((sizes[placement.slots_of(e)] > 0).sum()) <= 1 for e in range(7))  # one replica each


def test_plans_that_replicate_into_the_spare_slots_apply() -> None:
    changes = interpret(plan(expert_placement=HOT), SPARE)
    assert changes.placements is not None and changes.refused == ()
    first, second = changes.placements
    assert first.expert_of_slot.tolist() == [0, 1, 3, 0, 2, 3] and first.holders(3) == [0, 1]
    assert second.expert_of_slot.tolist() == [1, 2, 3, 0, 1, 3]
    assert first.primary(1).tolist() == [False, True, False]  # rank 1's expert 2 is its only copy
    assert interpret(plan(expert_placement=[[[0], [0], [1], [1]]] * 2), SPARE).placements is None  # 2 slots, not 3


@pytest.mark.parametrize(
    ("shape", "placement", "refusal"),
    [
        (SHAPE, HOT, "each rank has 2 (2 experts + 0 spare slots per EP rank)"),
        (SPARE, [[[0, 1], [0, 1], [0, 1], [1]]] * 2, "ranks hold [3, 4] expert slots; each rank has 3"),
        (SPARE, [[[0, 2], [0], [1], [1, 0]]] * 2, "distinct ranks in [0, 2)"),
    ],
)
def test_replicated_placements_that_do_not_fit_are_refused(
    shape: TrainerShape, placement: list[list[list[int]]], refusal: str
) -> None:
    changes = interpret(plan(expert_placement=placement), shape)
    assert changes.placements is None
    assert any(refusal in reason for reason in changes.refused), changes.refused
