"""Batched expert placement (numpy): the same placements as the per-layer planner, cheap repairs, and the gate
that moves the layers worth moving together."""

from __future__ import annotations

import numpy as np
import pytest

from moeops.rebalancer.experts import place_experts
from moeops.rebalancer.placement import (
    cheapest_worthwhile,
    choose_layers,
    holdings,
    place_layers,
    rank_loads,
    received,
    repair_layers,
    replicas_of,
)


@pytest.mark.parametrize("spare", [0, 8, 16])
@pytest.mark.parametrize("with_current", [False, True])
def test_every_layer_is_placed_as_the_per_layer_planner_places_it(spare: int, with_current: bool) -> None:
    rng = np.random.default_rng(spare + with_current)
    layers, experts, ranks = 12, 32, 8
    loads = rng.zipf(1.3, size=(layers, experts)).astype(np.float64)
    loads[0] = np.round(loads[0] / 4)  # ties and idle experts
    current = None
    if with_current:
        current = [
            place_experts(rng.permutation(loads[layer]).tolist(), ranks, redundant_slots=spare).replicas()
            for layer in range(layers)
        ]
    held = holdings(current, ranks, experts) if current is not None else None
    got = replicas_of(place_layers(loads, ranks, redundant_slots=spare, current=held))
    want = [
        place_experts(loads[layer].tolist(), ranks, redundant_slots=spare,
                      current=current[layer] if current is not None else None).replicas()
        for layer in range(layers)
    ]  # fmt: skip
    assert got == want


def test_bus_form_round_trips_and_replicated_experts_split_their_load() -> None:
    placement = [[[0, 1], [1], [0]]]  # expert 0 on both ranks
    held = holdings(placement, ranks=2, experts=3)
    assert replicas_of(held) == placement
    assert rank_loads(held, np.array([[10.0, 4.0, 2.0]])).tolist() == [[7.0, 9.0]]
    with pytest.raises(ValueError, match="placement"):
        holdings([[[0], [1]]], ranks=2, experts=3)


def test_the_most_profitable_prefix_moves_and_free_moves_ride_along() -> None:
    gains = np.array([1.0, 0.5, 0.01, 0.005, 0.0])
    receive = np.array([[2, 0, 0], [0, 2, 0], [0, 5, 0], [0, 0, 1], [0, 0, 1]])
    # 10 steps: layer 0 saves 10 s for 2 transfers (2 s), layer 1 saves 5 s in parallel on another rank (no
    # extra time); layer 2's 5 transfers would cost 3 s more than its 0.1 s; layer 3 fits under the busiest
    # rank's 2 transfers, so it comes free; layer 4 gains nothing.
    chosen = choose_layers(gains, receive, seconds_per_expert=1.0, steps_until_next_plan=10)
    assert chosen.tolist() == [True, True, False, True, False]
    assert not choose_layers(gains, receive, seconds_per_expert=100.0, steps_until_next_plan=10).any()
    assert not choose_layers(np.zeros(2), np.ones((2, 3), dtype=np.int64), 0.0, 10).any()


def test_a_repair_swaps_a_few_experts_and_keeps_every_rank_s_slots() -> None:
    rng = np.random.default_rng(0)
    layers, experts, ranks = 16, 64, 16
    loads = rng.zipf(1.3, size=(layers, experts)).astype(np.float64)
    current = place_layers(loads, ranks, redundant_slots=ranks)
    drifted = loads * np.exp(rng.normal(0.0, 0.3, loads.shape))
    repaired = repair_layers(drifted, current)
    assert (repaired.sum(axis=2) == current.sum(axis=2)).all()  # slots per rank
    assert (repaired.sum(axis=1) == current.sum(axis=1)).all()  # replicas per expert
    before, after = rank_loads(current, drifted).max(axis=1), rank_loads(repaired, drifted).max(axis=1)
    assert (after <= before).all() and after.sum() < before.sum()
    fresh = place_layers(drifted, ranks, redundant_slots=ranks, current=current)
    assert received(current, repaired).sum(axis=0).max() < received(current, fresh).sum(axis=0).max()


def test_the_candidate_worth_most_after_its_move_is_chosen_per_layer() -> None:
    loads = np.array([[8.0, 1.0, 1.0, 1.0]])
    current = holdings([[[0], [0], [1], [1]]], ranks=2, experts=4)  # 9 against 2
    costly = holdings([[[1], [0], [0], [0]]], ranks=2, experts=4)  # 8 against 3 too, for 4 transfers
    good = holdings([[[0], [1], [1], [1]]], ranks=2, experts=4)  # 8 against 3: one transfer
    chosen, gain, receive = cheapest_worthwhile(
        loads, current, [costly, good], seconds_per_token=1.0, seconds_per_expert=1.0, steps_until_next_plan=10
    )
    assert replicas_of(chosen) == [[[0], [1], [1], [1]]]
    assert gain.tolist() == [1.0] and receive.tolist() == [[0, 1]]
    # Worth less than its transfers on its own: still the best candidate; the gate (all layers together) decides.
    best, gain, receive = cheapest_worthwhile(
        loads, current, [good], seconds_per_token=1.0, seconds_per_expert=100.0, steps_until_next_plan=10
    )
    assert replicas_of(best) == replicas_of(good)
    assert not choose_layers(gain, receive, seconds_per_expert=100.0, steps_until_next_plan=10).any()
