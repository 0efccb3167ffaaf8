"""Pure pieces of the parallel layout: plan checks, layer split, micro-batches, stage parameter names."""

from __future__ import annotations

import pytest

from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import ParallelPlan
from moeops.model import Transformer
from moeops.trainer.errors import ConfigError
from moeops.trainer.preflight import check_plan
from moeops.trainer.runners import micro_batches
from moeops.trainer.stage import TransformerStage, split_layers

ARCH = Architecture(layers=5, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=64, seq_len=16)


def plan(data: int = 1, tensor: int = 1, pipeline: int = 1, expert: int = 1) -> ParallelPlan:
    return ParallelPlan(data=data, tensor=tensor, pipeline=pipeline, expert=expert, activation_checkpointing=False)


def test_layers_split_into_contiguous_near_equal_stages() -> None:
    assert split_layers(5, 2) == [range(3), range(3, 5)]
    assert split_layers(8, 4) == [range(2), range(2, 4), range(4, 6), range(6, 8)]
    assert split_layers(3, 3) == [range(1), range(1, 2), range(2, 3)]
    with pytest.raises(ValueError, match="cannot split 2 layers into 3 stages"):
        split_layers(2, 3)


def test_micro_batches_from_the_size_or_chosen_for_the_pipeline() -> None:
    assert micro_batches(None, 8, 1) == 1
    assert micro_batches(None, 8, 2) == 8
    assert micro_batches(None, 64, 2) == 8  # at most 4 per stage
    assert micro_batches(None, 6, 4) == 6
    assert micro_batches(2, 8, 1) == 4
    with pytest.raises(ConfigError, match=r"microBatchSize \(3\) must divide the per-rank batch \(8\)"):
        micro_batches(3, 8, 2)


@pytest.mark.parametrize(
    ("degrees", "world", "message"),
    [
        ({"data": 2}, 4, r"data×tensor×pipeline = 2×1×1 = 2, but 4 processes were started"),
        ({"tensor": 3}, 3, r"tensor degree 3 must divide architecture.heads \(4\)"),
        ({"pipeline": 6}, 6, r"pipeline degree 6 exceeds the model's layers \(5\)"),
        ({"data": 6, "expert": 3}, 6, r"expert degree 3 must divide the experts per layer \(4\)"),
        ({"data": 2, "expert": 4}, 2, r"and the data-parallel degree \(2\)"),
    ],
)
def test_plans_the_model_cannot_run_are_refused(degrees: dict[str, int], world: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_plan(plan(**degrees), ARCH, world)


def test_a_valid_composed_plan_passes() -> None:
    check_plan(plan(data=4, tensor=2, pipeline=2, expert=2), ARCH, 16)


def test_stages_keep_the_full_models_parameter_names() -> None:
    """So that checkpoints written by one layout load into another."""
    full = Transformer(ARCH)
    names: set[str] = set()
    for i, layers in enumerate(split_layers(ARCH.layers, 3)):
        stage = TransformerStage(full, layers, first=i == 0, last=i == 2)
        names |= set(stage.state_dict())
    assert names == set(full.state_dict())
