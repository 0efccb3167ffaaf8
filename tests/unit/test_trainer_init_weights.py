"""Layout-free initial weights (trainer/init_weights.py): a rank that holds some rows of a parameter draws exactly
those rows of the tensor one process would hold, whether the rows are a range (FSDP, pipeline) or expert ids
(expert parallelism, in any placement)."""

from __future__ import annotations

import torch

from moeops.trainer.init_weights import fill, row_seed


def _full(shape: tuple[int, ...], name: str = "blocks.0.attention.wq.weight") -> torch.Tensor:
    t = torch.empty(shape)
    fill(t, name, 0.02, seed=1)
    return t


def test_a_row_range_holds_those_rows_of_the_whole_tensor() -> None:
    full = _full((8, 5))
    part = torch.empty(3, 5)
    fill(part, "blocks.0.attention.wq.weight", 0.02, seed=1, rows=range(2, 5))
    assert torch.equal(part, full[2:5])


def test_expert_rows_are_drawn_by_expert_id_in_slot_order() -> None:
    name = "blocks.1.moe.experts.w1_EFD"
    full = _full((4, 3, 2), name)
    slots = torch.empty(3, 3, 2)  # a rank holding experts 3 and 1, and a replica of 3 in a spare slot
    fill(slots, name, 0.02, seed=1, rows=[3, 1, 3])
    assert torch.equal(slots, full[[3, 1, 3]])


def test_values_depend_on_the_seed_the_name_and_the_row_only() -> None:
    assert torch.equal(_full((4, 4)), _full((4, 4)))
    assert not torch.equal(_full((4, 4), "a"), _full((4, 4), "b"))
    assert row_seed(1, "a", 0) != row_seed(2, "a", 0) != row_seed(1, "a", 1)
    drawn = _full((64, 64))
    assert abs(float(drawn.std()) - 0.02) < 0.002 and float(drawn.abs().max()) < 0.2
