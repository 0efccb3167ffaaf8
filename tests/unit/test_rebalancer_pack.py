"""The two ways of each step of `place_layers` give the same placements: spare slots handed out one at a time or
by threshold, replicas packed one slot at a time or one expert at a time (ties, idle experts, stuck layers)."""

from __future__ import annotations

import numpy as np
import pytest

from moeops.rebalancer.experts import place_experts
from moeops.rebalancer.packing import (
    Floats,
    _pack_by_expert,
    _pack_by_slot,
    _replicate_by_slot,
    _replicate_by_threshold,
)
from moeops.rebalancer.placement import place_layers, replicas_of


def _loads(rng: np.random.Generator, kind: int, layers: int, experts: int) -> Floats:
    if kind == 0:
        return rng.zipf(1.3, size=(layers, experts)).astype(np.float64)
    if kind == 1:  # many ties and idle experts
        return np.round(rng.zipf(1.3, size=(layers, experts)) / 4).astype(np.float64)
    if kind == 2:
        return np.zeros((layers, experts))
    scaled: Floats = rng.integers(0, 6, size=(layers, experts)).astype(np.float64) * float(
        rng.choice([1.0, 0.1, 1 / 3])
    )
    return scaled


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_spare_slots_by_threshold_as_one_at_a_time(kind: int) -> None:
    rng = np.random.default_rng(kind)
    for _ in range(60):
        layers, experts, ranks = int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 20))
        loads = _loads(rng, kind, layers, experts)
        slots = int(rng.integers(experts, experts * ranks + 1))
        assert (_replicate_by_threshold(loads, slots, ranks) == _replicate_by_slot(loads, slots, ranks)).all()


def test_a_negative_load_is_refused() -> None:
    with pytest.raises(ValueError, match="not negative"):
        _replicate_by_threshold(np.array([[1.0, -1.0]]), 4, 2)


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_packing_by_expert_as_by_slot(kind: int) -> None:
    rng = np.random.default_rng(10 + kind)
    for _ in range(40):
        layers, experts = int(rng.integers(1, 4)), int(rng.integers(2, 33))
        ranks = int(rng.choice([r for r in range(1, 17) if r <= experts]))
        per_rank = int(rng.integers(-(-experts // ranks), 2 * -(-experts // ranks) + 1))
        loads = _loads(rng, kind, layers, experts)
        copies = _replicate_by_slot(loads, per_rank * ranks, ranks)
        by_slot, stuck_by_slot = _pack_by_slot(loads, copies, ranks)
        by_expert, stuck_by_expert = _pack_by_expert(loads, copies, ranks)
        assert (stuck_by_expert == stuck_by_slot).all()
        assert (by_expert[~stuck_by_slot] == by_slot[~stuck_by_slot]).all()  # a stuck layer is placed again


def test_many_ranks_are_placed_as_the_per_layer_planner_places_them() -> None:
    # 512 ranks × 3 slots for 64 experts: the spare slots by threshold, the replicas packed one expert at a time.
    rng = np.random.default_rng(7)
    loads = rng.zipf(1.5, size=(2, 64)).astype(np.float64)
    loads[1] = np.round(loads[1] / 3)
    got = replicas_of(place_layers(loads, 512, redundant_slots=3 * 512 - 64))
    want = [place_experts(layer.tolist(), 512, redundant_slots=3 * 512 - 64).replicas() for layer in loads]
    assert got == want
