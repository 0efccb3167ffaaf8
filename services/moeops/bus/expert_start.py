"""Where every expert sits when a job starts: the placement a plan's `expert_placement` is measured against until
the first expert plan is applied, defined once for both ends (pure, no imports beyond the standard library).

The trainer builds its first `Placement` from `starting_rank_experts` (trainer/expert_placement.py) and the
rebalancer plans from `starting_replicas` until rank 0 acknowledges an applied expert placement
(rebalancer/replan.py): with spare slots the trainer starts with replicas in them, so a planner that assumed one
copy per expert would propose placements with too few slots per rank, and the trainer would refuse every one.

Rank r holds experts r·L … r·L+L−1 (L = E/P: how the model's experts are sharded), then its `spare` slots hold
replicas of the experts that follow its own, wrapping around: (r+1)·L, (r+1)·L+1, … mod E.
"""

from __future__ import annotations


def starting_rank_experts(experts: int, ranks: int, spare: int = 0) -> list[list[int]]:
    """Per EP rank, the expert in each of its slots (its own first, then the replicas), as the trainer starts."""
    if ranks < 1 or experts < ranks or experts % ranks:
        raise ValueError(f"{experts} experts do not shard evenly over {ranks} EP ranks")
    per_rank = experts // ranks
    if not 0 <= spare <= experts - per_rank:
        raise ValueError(f"{spare} spare slots: at most {experts - per_rank} other experts per rank to replicate")
    return [
        [*range(rank * per_rank, (rank + 1) * per_rank)] + [((rank + 1) * per_rank + i) % experts for i in range(spare)]
        for rank in range(ranks)
    ]


def starting_replicas(experts: int, ranks: int, spare: int = 0) -> list[list[int]]:
    """The same placement in the bus form of one layer: per expert, the ranks holding it, ascending."""
    holders: list[list[int]] = [[] for _ in range(experts)]
    for rank, held in enumerate(starting_rank_experts(experts, ranks, spare)):
        for expert in held:
            holders[expert].append(rank)
    return holders
