"""Pure pieces of the trainer: the learning-rate schedule and the expert-parallel regrouping."""

from __future__ import annotations

import pytest
import torch

from moeops.trainer.expert_parallel import _expert_major
from moeops.trainer.schedule import lr_at


def test_warmup_then_cosine_to_the_floor() -> None:
    assert lr_at(0, peak=1.0, warmup=4, total=10) == pytest.approx(0.25)
    assert lr_at(3, peak=1.0, warmup=4, total=10) == pytest.approx(1.0)
    assert lr_at(4, peak=1.0, warmup=4, total=10) == pytest.approx(1.0)
    assert lr_at(10, peak=1.0, warmup=4, total=10) == pytest.approx(0.1)
    assert lr_at(7, peak=1.0, warmup=4, total=10) == pytest.approx(0.1 + 0.9 * 0.5)


def test_received_rows_are_regrouped_expert_major() -> None:
    # 2 sources × 2 local experts: source 0 sends 2 rows to expert 0 and 1 to expert 1; source 1 sends 1 and 2.
    recv_PL = torch.tensor([[2, 1], [1, 2]])
    rows = torch.tensor([0, 1, 2, 3, 4, 5])  # arrival order: s0e0 s0e0 s0e1 s1e0 s1e1 s1e1
    assert rows[_expert_major(recv_PL)].tolist() == [0, 1, 3, 2, 4, 5]  # e0: s0, s0, s1; e1: s0, s1, s1


def test_regrouping_handles_empty_blocks() -> None:
    recv_PL = torch.tensor([[0, 3], [2, 0]])
    assert _expert_major(recv_PL).tolist() == [3, 4, 0, 1, 2]
