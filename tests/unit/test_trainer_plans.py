"""How the trainer reads a rebalance plan (pure: no process group) and re-deals expert rows by slot."""

from __future__ import annotations

from itertools import accumulate

import pytest
import torch

from moeops.bus.messages import RebalancePlan
from moeops.trainer.expert_placement import Placement, rows_by_slot
from moeops.trainer.plans import TrainerShape, first_row, interpret, splits_layers

SHAPE = TrainerShape(
    global_batch=32, data=4, micro_batches=1, pipeline=1, expert=2, layers=2, experts=4, stage_layers=((0, 2),)
)
SWAPPED = [[[1], [0], [1], [0]], [[0], [0], [1], [1]]]
"""Layer 0: experts 1 and 3 on rank 0, 0 and 2 on rank 1; layer 1 as `shard_experts` starts."""


def plan(**fields: object) -> RebalancePlan:
    values: dict[str, object] = {
        "namespace": "ns",
        "job": "j",
        "epoch": 3,
        "apply_at_step": 12,
        "data_shares": [0.25, 0.25, 0.25, 0.25],
        "stage_layers": [(0, 2)],
        "predicted_gain": 0.2,
        "created_at_unix_s": 0.0,
    }
    return RebalancePlan.model_validate({**values, **fields})


def test_shares_become_whole_sequences_summing_to_the_global_batch() -> None:
    changes = interpret(plan(data_shares=[0.3, 0.3, 0.3, 0.1]), SHAPE)
    assert changes.shares is not None and sum(changes.shares) == 32
    assert changes.shares[3] < changes.shares[0] and changes.refused == ()
    assert (changes.epoch, changes.apply_at_step) == (3, 12)
    assert [first_row(changes.shares, r) for r in range(4)] == [0, *list(accumulate(changes.shares))[:3]]


@pytest.mark.parametrize(
    ("shape_change", "shares", "refusal"),
    [
        ({"data": 2}, [0.25] * 4, "4 ranks, but the job has 2"),
        ({"pipeline": 2, "stage_layers": ((0, 1), (1, 2))}, [0.4, 0.2, 0.2, 0.2], "pipeline parallelism"),
        ({"micro_batches": 4}, [0.32, 0.32, 0.32, 0.04], "cannot make 4 micro-batches"),
    ],
)
def test_shares_the_trainer_cannot_run_are_refused_with_a_reason(
    shape_change: dict[str, object], shares: list[float], refusal: str
) -> None:
    shape = TrainerShape(**{**SHAPE.__dict__, **shape_change})
    changes = interpret(plan(data_shares=shares), shape)
    assert changes.shares is None
    assert any(refusal in reason for reason in changes.refused), changes.refused


def test_a_placement_maps_experts_to_slots_both_ways() -> None:
    changes = interpret(plan(expert_placement=SWAPPED), SHAPE)
    assert changes.placements is not None and changes.refused == ()
    first, second = changes.placements
    assert first.expert_of_slot.tolist() == [1, 3, 0, 2] and not first.identity
    assert first.slot_of_expert.tolist() == [2, 0, 3, 1]
    assert first.experts_on(1).tolist() == [0, 2] and first.rank_of(3) == 0
    assert second.identity and second == Placement.contiguous(4, 2)


@pytest.mark.parametrize(
    ("placement", "refusal"),
    [
        ([[[0, 1], [0], [1], [1]], [[0], [0], [1], [1]]], "ranks hold [2, 3] expert slots"),  # no spare slot
        ([[[0], [0], [0], [1]], [[0], [0], [1], [1]]], "ranks hold [3, 1] expert slots; each rank has 2"),
        ([[[0], [1]], [[0], [1]]], "places 2 experts"),
        ([[[0], [0], [1], [1]]], "for 1 layers"),
    ],
)
def test_placements_the_trainer_cannot_run_are_refused(placement: list[list[list[int]]], refusal: str) -> None:
    changes = interpret(plan(expert_placement=placement), SHAPE)
    assert changes.placements is None and changes.shares is not None  # the other parts still apply
    assert any(refusal in reason for reason in changes.refused), changes.refused


def test_a_placement_without_expert_parallelism_is_refused() -> None:
    shape = TrainerShape(**{**SHAPE.__dict__, "expert": 1})
    assert interpret(plan(expert_placement=SWAPPED), shape).placements is None


def test_stage_layers_change_only_a_pipeline_and_must_tile_the_layers() -> None:
    piped = TrainerShape(**{**SHAPE.__dict__, "pipeline": 2, "layers": 4, "stage_layers": ((0, 2), (2, 4))})
    assert interpret(plan(stage_layers=[(0, 3), (3, 4)]), piped).stage_layers == ((0, 3), (3, 4))
    assert interpret(plan(stage_layers=[(0, 2), (2, 4)]), piped).empty  # the current split: nothing to do
    refused = interpret(plan(stage_layers=[(0, 1), (1, 2), (2, 4)]), piped)
    assert refused.stage_layers is None and any("do not split" in reason for reason in refused.refused)
    assert interpret(plan(stage_layers=[(0, 1)]), SHAPE).stage_layers is None  # one stage: nothing to re-split
    assert splits_layers([[0, 1], [1, 4]], 2, 4) and not splits_layers([[0, 1], [2, 4]], 2, 4)


def test_rows_sorted_by_expert_are_regrouped_by_slot() -> None:
    placement = Placement([1, 3, 0, 2], ranks=2)
    counts_E = torch.tensor([2, 1, 0, 3])  # rows 0-1 expert 0, row 2 expert 1, rows 3-5 expert 3
    perm = rows_by_slot(counts_E, placement)
    assert perm.tolist() == [2, 3, 4, 5, 0, 1]  # expert 1, expert 3, expert 0, (expert 2: none)


def test_a_placement_must_hold_every_expert_once() -> None:
    with pytest.raises(ValueError, match="not a placement"):
        Placement([0, 0, 1, 2], ranks=2)
    with pytest.raises(ValueError, match="not a placement"):
        Placement([0, 1, 2], ranks=2)
