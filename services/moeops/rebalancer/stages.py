"""Pipeline: contiguous layer ranges over stages that minimise the slowest stage (the pipeline's pace).

Exact by dynamic programming over prefixes: best[p][l] is the smallest possible bottleneck for the first l layers
on p stages. O(P·L·C) for L layers, P stages and a cap of C layers per stage (C = L without one): a few
milliseconds for a hundred layers, so no heuristic is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

LayerRange = tuple[int, int]


@dataclass(frozen=True)
class StagePlan:
    ranges: tuple[LayerRange, ...]
    """Per stage, the layers [start, stop) it runs (`RebalancePlan.stage_layers`)."""
    stage_seconds: tuple[float, ...]

    @property
    def bottleneck_seconds(self) -> float:
        return max(self.stage_seconds)


def stage_seconds(layer_seconds: Sequence[float], ranges: Sequence[LayerRange]) -> list[float]:
    return [math.fsum(layer_seconds[start:stop]) for start, stop in ranges]


def layer_seconds_from_stages(measured_stage_seconds: Sequence[float], ranges: Sequence[LayerRange]) -> list[float]:
    """Per-layer times estimated from per-stage times, spread evenly over each stage's layers.

    Workers report one compute time per step, not per layer, so this is the best the metrics allow: exact for
    identical layers (a uniform MoE stack), an approximation when the embedding or head make the ends heavier.
    """
    per_layer: list[float] = []
    for seconds, (start, stop) in zip(measured_stage_seconds, ranges, strict=True):
        per_layer.extend([seconds / (stop - start)] * (stop - start))
    return per_layer


def partition_layers(
    layer_seconds: Sequence[float], stages: int, *, max_layers_per_stage: int | None = None
) -> StagePlan:
    """The contiguous, non-empty partition of the layers over `stages` with the smallest slowest stage.

    Ties go to the partition whose last stage starts latest (deterministic). Raises ValueError when the layers
    cannot fit: fewer layers than stages, or more than stages × the cap.
    """
    layers = len(layer_seconds)
    cap = layers if max_layers_per_stage is None else max_layers_per_stage
    if stages < 1 or cap < 1 or layers < stages or layers > stages * cap:
        raise ValueError(f"{layers} layers cannot be split over {stages} stages of 1..{cap} layers")
    prefix = [0.0, *accumulate(float(seconds) for seconds in layer_seconds)]
    # best[p][l]: smallest bottleneck for layers [0, l) on p stages; cut[p][l]: where the p-th stage starts.
    best = [[math.inf] * (layers + 1) for _ in range(stages + 1)]
    cut = [[0] * (layers + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for p in range(1, stages + 1):
        # p stages hold at least p layers and, leaving room for the rest, at most layers - (stages - p).
        for stop in range(p, layers - (stages - p) + 1):
            for start in range(max(p - 1, stop - cap), stop):
                candidate = max(best[p - 1][start], prefix[stop] - prefix[start])
                if candidate <= best[p][stop]:
                    best[p][stop], cut[p][stop] = candidate, start
    if math.isinf(best[stages][layers]):
        raise ValueError(f"{layers} layers cannot be split over {stages} stages of 1..{cap} layers")
    ranges: list[LayerRange] = []
    stop = layers
    for p in range(stages, 0, -1):
        start = cut[p][stop]
        ranges.append((start, stop))
        stop = start
    ranges.reverse()
    return StagePlan(tuple(ranges), tuple(stage_seconds(layer_seconds, ranges)))
