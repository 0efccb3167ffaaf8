"""Expert placement: equal slots per rank, balanced loads, hot experts replicated; migration cost gates moves."""

from __future__ import annotations

import random

import pytest

from moeops.rebalancer.experts import (
    ExpertPlacement,
    imbalance,
    keep_in_place,
    pack_replicas,
    place_experts,
    replicate_hot_experts,
)
from moeops.rebalancer.placement import holdings, received


def zipf_loads(rng: random.Random, experts: int) -> list[float]:
    loads = [1000.0 / (rank + 1) ** rng.uniform(0.5, 1.5) for rank in range(experts)]
    rng.shuffle(loads)
    return loads


def busiest_receiver(current: ExpertPlacement, proposed: ExpertPlacement) -> int:
    """The most experts one rank receives to go from `current` to `proposed` (what a move's time is made of)."""
    ranks, experts = len(current.rank_experts), current.experts
    before, after = (holdings([p.replicas()], ranks, experts) for p in (current, proposed))
    return int(received(before, after).max())


def check(placement: ExpertPlacement, loads: list[float], ranks: int, spare: int) -> None:
    assert len(placement.rank_experts) == ranks
    assert {len(slots) for slots in placement.rank_experts} == {(len(loads) + spare) // ranks}
    replicas = placement.replicas()
    assert all(replicas[e] for e in range(len(loads)))  # every expert placed
    assert all(len(set(r)) == len(r) for r in replicas)  # at most once per rank
    rank_loads = placement.rank_loads(loads)
    assert sum(rank_loads) == pytest.approx(sum(loads))
    heaviest_replica = max(loads[e] / len(replicas[e]) for e in range(len(loads)))
    # The greedy (list-scheduling) bound: no rank exceeds the mean by more than one replica's load.
    assert max(rank_loads) <= sum(rank_loads) / ranks + heaviest_replica + 1e-6


def test_global_placement_on_random_zipf_loads() -> None:
    rng = random.Random(3)
    for _ in range(100):
        ranks = rng.choice([2, 4, 8, 16])
        per_rank = rng.randint(1, 6)
        spare = rng.randint(0, ranks)
        experts = ranks * per_rank + spare - 2 * spare  # experts + spare slots fill the ranks exactly
        if experts < 1:
            continue
        loads = zipf_loads(rng, experts)
        check(place_experts(loads, ranks, redundant_slots=spare), loads, ranks, spare)


def test_hierarchical_placement_on_random_zipf_loads() -> None:
    rng = random.Random(5)
    for _ in range(60):
        nodes = rng.choice([2, 4])
        gpus_per_node = rng.choice([2, 4])
        ranks = nodes * gpus_per_node
        spare = ranks * rng.randint(0, 1)  # a spare slot per GPU, or none
        experts = ranks * rng.randint(1, 4)
        loads = zipf_loads(rng, experts)
        placement = place_experts(loads, ranks, redundant_slots=spare, nodes=nodes, groups=nodes * 2)
        check(placement, loads, ranks, spare)
        # Each expert's replicas stay within one node.
        for holders in placement.replicas():
            assert len({rank // gpus_per_node for rank in holders}) == 1


def test_spare_slots_go_to_the_hottest_experts() -> None:
    assert replicate_hot_experts([100.0, 10.0, 40.0, 10.0], 7, max_replicas=4) == [3, 1, 2, 1]
    assert replicate_hot_experts([100.0, 1.0], 4, max_replicas=2) == [2, 2]  # capped at the rank count


def test_replication_lowers_the_imbalance() -> None:
    loads = [800.0] + [100.0] * 7
    without = place_experts(loads, 4, redundant_slots=0)
    spare = place_experts(loads, 4, redundant_slots=4)
    assert imbalance(spare.rank_loads(loads)) < imbalance(without.rank_loads(loads))
    assert len(spare.replicas()[0]) > 1


def test_packing_never_puts_an_expert_twice_on_a_rank() -> None:
    # Many replicas of few experts: the greedy corner the swap in pack_replicas gets out of.
    rng = random.Random(11)
    for _ in range(200):
        ranks = rng.randint(2, 6)
        experts = rng.randint(1, ranks)
        copies = [rng.randint(1, ranks) for _ in range(experts)]
        while sum(copies) % ranks:
            grow = [e for e in range(experts) if copies[e] < ranks]
            copies[rng.choice(grow)] += 1
        loads = [rng.uniform(1, 100) for _ in range(experts)]
        held = pack_replicas(loads, copies, ranks)
        assert all(len(h) == len(set(h)) == sum(copies) // ranks for h in held)
        assert sorted(e for h in held for e in h) == sorted(e for e in range(experts) for _ in range(copies[e]))


def test_uneven_slots_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fill"):
        place_experts([1.0] * 7, 2)


def test_bus_form_round_trips() -> None:
    placement = place_experts([5.0, 1.0, 3.0, 2.0], 2, redundant_slots=2)
    again = ExpertPlacement.from_replicas(placement.replicas(), 2)
    assert again.replicas() == placement.replicas()
    assert [sorted(s) for s in again.rank_experts] == [sorted(s) for s in placement.rank_experts]


def test_relabelling_keeps_experts_where_they_are() -> None:
    rng = random.Random(11)
    loads = zipf_loads(rng, 32)
    current = place_experts(loads, 8, redundant_slots=8)
    # The same placement with its ranks shuffled: relabelling finds the original ranks, nothing moves.
    shuffled = list(current.rank_experts)
    rng.shuffle(shuffled)
    assert keep_in_place(shuffled, current.replicas()) == list(current.rank_experts)
    # Re-planning on slightly different loads: same loads per rank as without `current`, fewer moves.
    drifted = [load * rng.uniform(0.9, 1.1) for load in loads]
    fresh = place_experts(drifted, 8, redundant_slots=8)
    kept = place_experts(drifted, 8, redundant_slots=8, current=current.replicas())
    assert sorted(kept.rank_loads(drifted)) == pytest.approx(sorted(fresh.rank_loads(drifted)))
    assert busiest_receiver(current, kept) <= busiest_receiver(current, fresh)
    assert place_experts(loads, 8, redundant_slots=8, current=current.replicas()) == current


def test_relabelling_stays_within_nodes() -> None:
    rng = random.Random(12)
    loads = zipf_loads(rng, 32)
    current = place_experts(loads, 8, redundant_slots=8, nodes=2, groups=4)
    drifted = [load * rng.uniform(0.5, 1.5) for load in loads]
    kept = place_experts(drifted, 8, redundant_slots=8, nodes=2, groups=4, current=current.replicas())
    check(kept, drifted, 8, 8)
    for holders in kept.replicas():
        assert len({rank // 4 for rank in holders}) == 1
