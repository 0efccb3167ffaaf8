"""Pipeline: contiguous layer ranges over stages that minimise the slowest stage (the pipeline's pace).

Exact by dynamic programming over prefixes: best[p][l] is the smallest possible bottleneck for the first l layers
on p stages. O(P·L·C) for L layers, P stages and a cap of C layers per stage (C = L without one): a few
milliseconds for a hundred layers, so no heuristic is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def layer_seconds_from_stages(
    measured_stage_seconds: Sequence[float],
    ranges: Sequence[LayerRange],
    layer_costs: Sequence[float] = (),
) -> list[float]:
    """Per-layer times estimated from per-stage times: each stage's time spread over its layers in proportion to
    `layer_costs` (per layer of the model, measured: `LayerCosts.seconds`), evenly without them or where a
    stage's layers have no measured cost.

    Even is exact for identical layers (a uniform MoE stack), an approximation when the embedding or head make
    the ends heavier; measured costs say which layers are heavier. The stage totals stay the measured ones (they
    hold what no layer is timed for: embedding, head, optimizer), so a split's predicted gain is in their units.
    """
    measured = len(layer_costs) == (ranges[-1][1] if ranges else 0)
    per_layer: list[float] = []
    for seconds, (start, stop) in zip(measured_stage_seconds, ranges, strict=True):
        costs = [max(0.0, float(cost)) for cost in layer_costs[start:stop]] if measured else []
        total = math.fsum(costs)
        if total > 0:
            per_layer.extend(seconds * cost / total for cost in costs)
        else:
            per_layer.extend([seconds / (stop - start)] * (stop - start))
    return per_layer


@dataclass
class LayerCosts:
    """Per layer of the model, the smoothed compute seconds the ranks running it report
    (`WorkerMetrics.layer_compute_seconds`); a layer no rank reported stays 0 (unmeasured)."""

    smoothing: float = 0.3
    seconds: list[float] = field(default_factory=list)

    def fold(self, layer_seconds: Sequence[float]) -> None:
        """One rank's report for one step: its layers' times folded in (0: a layer another stage runs)."""
        if len(layer_seconds) != len(self.seconds):  # the first report, or the model changed
            self.seconds = [0.0] * len(layer_seconds)
        for layer, sample in enumerate(layer_seconds):
            if sample > 0:
                before = self.seconds[layer]
                self.seconds[layer] = sample if before <= 0 else before + self.smoothing * (sample - before)


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
