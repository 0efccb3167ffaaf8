"""Calibrating the early-exit threshold on held-out prompts (CALM's consistency criterion), for
`benchmarks/early_exit.py`: the server takes its threshold from the InferenceService's spec and calibrates nothing.

The full model's greedy output is the reference. A threshold is acceptable when the early-exit decoder's tokens
agree with the reference at ≥ 1 - δ of the positions; the lower the threshold, the earlier tokens leave, so the
choice is the lowest acceptable one.

Why the grid is walked downwards and stops at the first failure (CALM's fixed-sequence testing, from
Learn-then-Test) rather than taking the lowest threshold that passes anywhere: agreement is not monotone in
the threshold on a finite sample, and a low threshold that passes after a higher one failed passes by luck of
the sample more often than not. A threshold that fails ends the search, so the result is the last of an
unbroken run of passes from the top; the top itself, 1.0, always passes (it is the full model).

Agreement by position: position i of a prompt's output agrees when both outputs have a token there and it is
the same; the positions counted are those of the longer of the two outputs, so stopping early (a missing
token) and running on past the reference's EOS are both disagreements. Once a token differs the rest is
conditioned on another prefix; that is what serving would produce, so it is counted as it comes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from torch import Tensor

from moeops.model import Transformer
from moeops.serving.decoding.decode import EOS, ExitStats, generate
from moeops.serving.decoding.early_exit import NEVER_EXIT, ExitPolicy

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""0.05 … 0.95; 1.0 (never exit) is always the starting point."""

Outputs = Sequence[Sequence[int]]


def token_agreement(reference: Outputs, candidate: Outputs) -> float:
    """Fraction of positions, over all prompts, where the candidate's token equals the reference's (1.0 when
    there is no position at all)."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} candidate outputs for {len(reference)} reference outputs")
    same = total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        total += max(len(ref), len(cand))
        same += sum(a == b for a, b in zip(ref, cand, strict=False))
    return same / total if total else 1.0


@dataclass(frozen=True)
class CalibrationPoint:
    threshold: float
    agreement: float
    mean_exit_layer: float | None = None
    """Of the early-exit run at this threshold, where the decoder reports it (the speed it buys)."""


@dataclass(frozen=True)
class Calibration:
    threshold: float
    """The lowest threshold of the unbroken run of acceptable ones from 1.0 down (1.0: none below it was)."""
    delta: float
    points: tuple[CalibrationPoint, ...]
    """Every threshold tried, from the top down, the first failure last."""

    @property
    def agreement(self) -> float:
        return next(p.agreement for p in self.points if p.threshold == self.threshold)


def calibrate(
    decode: Callable[[float], tuple[Outputs, float | None]],
    reference: Outputs,
    delta: float,
    grid: Sequence[float] = DEFAULT_GRID,
) -> Calibration:
    """The lowest threshold whose outputs agree with `reference` at ≥ 1 - δ of positions, walking `grid` from
    the top and stopping at the first failure. `decode(threshold)` returns the outputs of the held-out prompts
    at that threshold and, optionally, their mean exit layer."""
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    if any(not 0.0 <= t <= 1.0 for t in grid):
        raise ValueError(f"thresholds must be in [0, 1], got {sorted(grid)}")
    points = [CalibrationPoint(1.0, 1.0)]
    chosen = 1.0
    for threshold in sorted(set(grid) - {1.0}, reverse=True):
        outputs, mean_exit = decode(threshold)
        agreement = token_agreement(reference, outputs)
        points.append(CalibrationPoint(threshold, agreement, mean_exit))
        if agreement < 1.0 - delta:
            break
        chosen = threshold
    return Calibration(chosen, delta, tuple(points))


def calibrate_model(
    model: Transformer,
    prompts: Sequence[Sequence[int] | Tensor],
    max_tokens: int,
    policy: ExitPolicy,
    delta: float,
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    eos: int | None = EOS,
) -> Calibration:
    """`calibrate` with the model's own decoder: the reference is its full-depth greedy output, each grid
    point the early-exit output under `policy` (rule, min_layer) at that threshold."""
    layers = model.arch.layers

    def run(p: ExitPolicy) -> tuple[list[list[int]], float]:
        decoded = [list(generate(model, prompt, max_tokens, p, eos=eos)) for prompt in prompts]
        stats = ExitStats.of([d for seq in decoded for d in seq], layers)
        return [[d.token for d in seq] for seq in decoded], stats.mean_exit_layer

    reference, _ = run(NEVER_EXIT)
    # enabled whatever the service's setting: calibration is what decides whether exiting is worth it
    return calibrate(lambda t: run(replace(policy, enabled=True, threshold=t)), reference, delta, grid)
