"""Ranks relabelled to keep experts in place: the sparse way (rank by rank, for thousands of ranks) gives the
dense way's labels, and `place_layers` through it still equals the per-layer planner."""

from __future__ import annotations

import numpy as np
import pytest

from moeops.rebalancer import relabel
from moeops.rebalancer.experts import place_experts
from moeops.rebalancer.placement import holdings, place_layers, replicas_of
from moeops.rebalancer.relabel import _held_sets, _keep_dense, _keep_one_each, _keep_sparse, keep_in_place


def _placements(seed: int, layers: int, experts: int, ranks: int, spare: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    loads = rng.zipf(1.3, size=(layers, experts)).astype(np.float64)
    loads[0] = np.round(loads[0] / 4)  # ties and idle experts
    drifted = loads * np.exp(rng.normal(0.0, 0.5, loads.shape))
    return place_layers(loads, ranks, redundant_slots=spare), place_layers(drifted, ranks, redundant_slots=spare)


@pytest.mark.parametrize(
    ("experts", "ranks", "spare"),
    [(32, 8, 0), (32, 8, 8), (32, 8, 16), (16, 16, 16), (8, 64, 56), (16, 64, 112), (64, 32, 32)],
)
def test_the_sparse_way_labels_as_the_dense_way(experts: int, ranks: int, spare: int) -> None:
    for seed in range(3):
        current, fresh = _placements(seed, 6, experts, ranks, spare)
        dense = _keep_dense(fresh, current)
        sparse = [_keep_sparse(new, old) for new, old in zip(_held_sets(fresh), _held_sets(current), strict=True)]
        assert dense.tolist() == sparse
        assert (dense >= 0).any()  # experts were kept: the comparison is not between two empty labellings


@pytest.mark.parametrize(("experts", "ranks"), [(8, 64), (16, 32), (32, 32)])
def test_one_expert_a_rank_labels_as_the_greedy(experts: int, ranks: int) -> None:
    for seed in range(3):
        current, fresh = _placements(seed, 6, experts, ranks, ranks - experts)
        assert _keep_one_each(fresh, current).tolist() == _keep_dense(fresh, current).tolist()


def test_a_placement_kept_whole_is_not_moved_and_unshared_ranks_go_in_order() -> None:
    current, _ = _placements(0, 3, 16, 32, 16)
    shuffled = current[:, np.random.default_rng(1).permutation(32)]
    assert (keep_in_place(shuffled, current) == current).all()
    nothing_shared = np.zeros_like(current)
    nothing_shared[:, :, 0] = True  # every rank holds expert 0, which no rank held before
    current_without_0 = current.copy()
    current_without_0[:, :, 0] = False
    assert _keep_sparse(_held_sets(nothing_shared)[0], _held_sets(current_without_0)[0]) == [-1] * 32


@pytest.mark.parametrize("spare", [0, 8, 16])
def test_place_layers_through_the_sparse_way_equals_the_per_layer_planner(
    spare: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relabel, "KEEP_IN_PLACE_DENSE_MAX_CELLS", 0)
    rng = np.random.default_rng(spare)
    layers, experts, ranks = 8, 32, 8
    loads = rng.zipf(1.3, size=(layers, experts)).astype(np.float64)
    current = [
        place_experts(rng.permutation(loads[layer]).tolist(), ranks, redundant_slots=spare).replicas()
        for layer in range(layers)
    ]
    got = replicas_of(place_layers(loads, ranks, redundant_slots=spare, current=holdings(current, ranks, experts)))
    want = [
        place_experts(loads[layer].tolist(), ranks, redundant_slots=spare, current=current[layer]).replicas()
        for layer in range(layers)
    ]
    assert got == want
