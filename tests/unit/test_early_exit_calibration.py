"""Threshold calibration (benchmarks/early_exit_calibration.py, what benchmarks/early_exit.py calibrates with):
agreement by position, the top-down search that stops at the first failure, and the model's own decoder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from moeops.api.v1alpha1.presets import Architecture
from moeops.model import Transformer
from moeops.serving.decoding.early_exit import ExitPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from early_exit_calibration import Outputs, calibrate, calibrate_model, token_agreement

REFERENCE: Outputs = [[5, 6, 7, 2], [8, 9]]
Decoder = Callable[[float], tuple[Outputs, float | None]]


def test_agreement_counts_positions_of_the_longer_output() -> None:
    assert token_agreement(REFERENCE, REFERENCE) == 1.0
    assert token_agreement(REFERENCE, [[5, 6, 0, 2], [8, 9]]) == 5 / 6
    assert token_agreement(REFERENCE, [[5, 6], [8, 9, 4, 4]]) == 4 / 8  # stopped early, ran on
    assert token_agreement([], []) == 1.0
    with pytest.raises(ValueError, match="candidate outputs"):
        token_agreement(REFERENCE, [[5]])


def _fake(agreement_at: dict[float, float]) -> tuple[list[float], Decoder]:
    """A decoder whose output at threshold t agrees with REFERENCE's first sequence at the given fraction
    (in quarters), and the thresholds it was asked for."""
    asked: list[float] = []

    def decode(threshold: float) -> tuple[Outputs, float | None]:
        asked.append(threshold)
        right = round(agreement_at[threshold] * 4)
        first = [*REFERENCE[0][:right], *([0] * (4 - right))]
        return [first], threshold

    return asked, decode


def test_calibration_takes_the_lowest_threshold_of_the_unbroken_run_from_the_top() -> None:
    reference = REFERENCE[:1]
    asked, decode = _fake({0.9: 1.0, 0.7: 1.0, 0.5: 0.75, 0.3: 1.0, 0.1: 0.5})
    result = calibrate(decode, reference, delta=0.1, grid=[0.1, 0.3, 0.5, 0.7, 0.9])
    # 0.3 passes again, but after 0.5 failed: the search stopped there.
    assert result.threshold == 0.7 and asked == [0.9, 0.7, 0.5]
    assert [p.threshold for p in result.points] == [1.0, 0.9, 0.7, 0.5] and result.agreement == 1.0
    loose = calibrate(decode, reference, delta=0.25, grid=[0.1, 0.3, 0.5, 0.7, 0.9])
    assert loose.threshold == 0.3 and loose.points[-1].agreement == 0.5
    none = calibrate(_fake({0.9: 0.5})[1], reference, delta=0.1, grid=[0.9])
    assert none.threshold == 1.0  # never exit: the full model always agrees with itself
    with pytest.raises(ValueError, match="delta"):
        calibrate(decode, reference, delta=1.5)


def test_calibrating_a_model_with_its_decoder() -> None:
    torch.manual_seed(0)
    arch = Architecture(layers=3, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=24, seq_len=32)
    model = Transformer(arch).eval()
    with torch.no_grad():
        model.head.weight.mul_(40.0)
    prompts = [[1, 5, 9], [1, 7, 7, 12]]
    policy = ExitPolicy(enabled=False, rule="top2-margin", min_layer=1)  # calibration enables it
    strict = calibrate_model(model, prompts, 6, policy, delta=0.0, grid=[0.0, 0.5, 0.9], eos=None)
    assert strict.agreement == 1.0
    anything = calibrate_model(model, prompts, 6, policy, delta=1.0, grid=[0.0, 0.5, 0.9], eos=None)
    assert anything.threshold == 0.0
    assert anything.points[-1].mean_exit_layer == 1.0  # threshold 0: every token leaves at min_layer
