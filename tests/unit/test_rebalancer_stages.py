"""Pipeline stages: the DP's bottleneck equals brute force; caps and contiguity hold."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from moeops.rebalancer.stages import (
    layer_seconds_from_stages,
    partition_layers,
    stage_seconds,
)


def brute_force_bottleneck(layer_seconds: list[float], stages: int, cap: int) -> float:
    layers = len(layer_seconds)
    best = math.inf
    for cuts in itertools.combinations(range(1, layers), stages - 1):
        bounds = [0, *cuts, layers]
        ranges = list(itertools.pairwise(bounds))
        if all(stop - start <= cap for start, stop in ranges):
            best = min(best, max(stage_seconds(layer_seconds, ranges)))
    return best


def test_dp_matches_brute_force_on_small_random_cases() -> None:
    rng = random.Random(7)
    for _ in range(300):
        layers = rng.randint(1, 10)
        stages = rng.randint(1, layers)
        cap = rng.randint(math.ceil(layers / stages), layers)
        times = [rng.choice([rng.uniform(0.1, 5.0), float(rng.randint(1, 3))]) for _ in range(layers)]
        plan = partition_layers(times, stages, max_layers_per_stage=cap)
        assert plan.bottleneck_seconds == pytest.approx(brute_force_bottleneck(times, stages, cap))
        assert plan.ranges[0][0] == 0 and plan.ranges[-1][1] == layers
        assert all(a[1] == b[0] for a, b in itertools.pairwise(plan.ranges))
        assert all(1 <= stop - start <= cap for start, stop in plan.ranges)


def test_a_slow_layer_gets_a_stage_of_its_own() -> None:
    plan = partition_layers([1, 1, 1, 1, 4, 1, 1, 1, 1], 3)
    assert plan.ranges == ((0, 4), (4, 5), (5, 9))
    assert plan.bottleneck_seconds == 4.0


def test_the_memory_cap_is_respected_even_at_a_cost() -> None:
    plan = partition_layers([1, 1, 1, 10], 2, max_layers_per_stage=2)
    assert plan.ranges == ((0, 2), (2, 4))
    assert plan.bottleneck_seconds == 11.0


def test_impossible_partitions_are_refused() -> None:
    with pytest.raises(ValueError):
        partition_layers([1.0, 1.0], 3)
    with pytest.raises(ValueError):
        partition_layers([1.0] * 5, 2, max_layers_per_stage=2)


def test_per_layer_estimate_from_stage_times_round_trips() -> None:
    ranges = [(0, 4), (4, 7), (7, 10)]
    per_layer = layer_seconds_from_stages([8.0, 3.0, 6.0], ranges)
    assert stage_seconds(per_layer, ranges) == pytest.approx([8.0, 3.0, 6.0])
