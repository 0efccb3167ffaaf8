"""Expert placement, as DeepSeek's EPLB does it, plus the cost of getting there that EPLB leaves out.

For one MoE layer: E experts with measured loads (tokens per step), R EP ranks with S slots each, R·S = E + spare.
1. Replicate: each spare slot goes to the expert with the highest load per replica (a hot expert's tokens are split
   evenly over its replicas by the dispatcher), never more replicas than ranks.
2. Pack: replicas largest-first onto the least-loaded rank that still has a free slot and does not hold that
   expert yet (the bus schema allows an expert once per rank), so every rank ends with exactly S slots.
Hierarchical (nodes > 1): expert groups are first packed over nodes (balanced group loads, equal group counts),
then each node replicates and packs its own experts over its GPUs, so a token's experts stay mostly within a node
and the expensive inter-node all-to-all is balanced too.

Migration: a rank that must hold an expert it does not hold now receives its weights and optimizer state. Ranks
receive in parallel over their own links, so the move takes as long as the busiest receiver. It pays off only when
the step time it saves, over the steps until the next re-plan, exceeds that: `placement.choose_layers` decides it
for every layer at once.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ExpertPlacement:
    rank_experts: tuple[tuple[int, ...], ...]
    """Per EP rank, the expert in each of its slots (all ranks have the same number of slots)."""
    experts: int

    @property
    def slots_per_rank(self) -> int:
        return len(self.rank_experts[0])

    def replicas(self) -> list[list[int]]:
        """Per expert, the ranks holding it, ascending (`RebalancePlan.expert_placement`'s per-layer entry)."""
        holders: list[list[int]] = [[] for _ in range(self.experts)]
        for rank, experts in enumerate(self.rank_experts):
            for expert in experts:
                holders[expert].append(rank)
        return holders

    def rank_loads(self, expert_loads: Sequence[float]) -> list[float]:
        """Per rank, the tokens it computes when each expert's load is split evenly over its replicas."""
        copies = [0] * self.experts
        for experts in self.rank_experts:
            for expert in experts:
                copies[expert] += 1
        per_replica = [load / count if count else 0.0 for load, count in zip(expert_loads, copies, strict=False)]
        return [math.fsum(per_replica[e] for e in experts) for experts in self.rank_experts]

    @classmethod
    def from_replicas(cls, replicas: Sequence[Sequence[int]], ranks: int) -> ExpertPlacement:
        """From the bus form (per expert, its ranks); slots within a rank are ordered by expert id."""
        rank_experts: list[list[int]] = [[] for _ in range(ranks)]
        for expert, holders in enumerate(replicas):
            for rank in holders:
                rank_experts[rank].append(expert)
        return cls(tuple(tuple(experts) for experts in rank_experts), len(replicas))


def replicate_hot_experts(loads: Sequence[float], slots: int, max_replicas: int) -> list[int]:
    """Replicas per expert: one each, then every spare slot to the expert with the most load per replica."""
    experts = len(loads)
    if not experts <= slots <= experts * max_replicas:
        raise ValueError(f"{slots} slots cannot hold {experts} experts with 1..{max_replicas} replicas each")
    copies = [1] * experts
    # Max-heap on load per replica; ties to the lower expert id so the result is deterministic.
    heap = [(-load, expert) for expert, load in enumerate(loads)]
    heapq.heapify(heap)
    for _ in range(slots - experts):
        _, expert = heapq.heappop(heap)
        copies[expert] += 1
        if copies[expert] < max_replicas:
            heapq.heappush(heap, (-loads[expert] / copies[expert], expert))
    return copies


def pack_replicas(loads: Sequence[float], copies: Sequence[int], ranks: int) -> list[list[int]]:
    """Per rank, the experts it holds: replicas largest-first onto the least-loaded rank with room for them."""
    slots = sum(copies)
    if slots % ranks:
        raise ValueError(f"{slots} replicas do not fill {ranks} ranks equally")
    per_rank = slots // ranks
    # Heaviest first, ties to the lower expert id (plain tuple order on (−load, expert): no key function).
    items = sorted((-loads[e] / copies[e], e) for e in range(len(loads)) for _ in range(copies[e]))
    held: list[list[int]] = [[] for _ in range(ranks)]
    rank_load = [0.0] * ranks
    open_ranks = [(0.0, rank) for rank in range(ranks)]  # (load, rank) of the ranks with a free slot
    for negative_load, expert in items:
        load = -negative_load
        skipped = []
        while open_ranks and expert in held[open_ranks[0][1]]:
            skipped.append(heapq.heappop(open_ranks))
        if open_ranks:
            _, rank = heapq.heappop(open_ranks)
            for entry in skipped:
                heapq.heappush(open_ranks, entry)
        else:
            rank = _make_room(held, expert, per_rank)
            # Rare (the last few items only): recount the loads the move changed and rebuild the heap.
            rank_load = [math.fsum(loads[e] / copies[e] for e in h) for h in held]
            open_ranks = [(rank_load[r], r) for r in range(ranks) if len(held[r]) < per_rank and r != rank]
            heapq.heapify(open_ranks)
        held[rank].append(expert)
        rank_load[rank] += load
        if len(held[rank]) < per_rank:
            heapq.heappush(open_ranks, (rank_load[rank], rank))
    return held


def _make_room(held: list[list[int]], expert: int, per_rank: int) -> int:
    """Greedy painted itself into a corner: the only ranks with free slots already hold `expert`. Move another
    expert from a rank without `expert` into the free slot, freeing a slot there; returns that rank."""
    for free_rank, experts in enumerate(held):
        if len(experts) >= per_rank:
            continue
        for rank, others in enumerate(held):
            if expert in others or rank == free_rank:
                continue
            for moved in others:
                if moved not in experts:
                    others.remove(moved)
                    experts.append(moved)
                    return rank
    raise ValueError(f"no rank can take another replica of expert {expert}")


def place_experts(
    expert_loads: Sequence[float],
    ep_ranks: int,
    *,
    redundant_slots: int = 0,
    nodes: int = 1,
    groups: int | None = None,
    current: Sequence[Sequence[int]] | None = None,
) -> ExpertPlacement:
    """EPLB's placement for one layer: hierarchical over `nodes` when the expert groups divide evenly over them,
    else global (as EPLB falls back). `groups` defaults to `nodes` (contiguous expert ids form a group).

    `current` (per expert, the ranks holding it now): the ranks of the result are relabelled, within each node
    when hierarchical, so that as many replicas as possible stay where they are (`keep_in_place`); the loads
    are the same, the migration smaller."""
    experts = len(expert_loads)
    slots = experts + redundant_slots
    if ep_ranks < 1 or slots % ep_ranks:
        raise ValueError(f"{experts} experts + {redundant_slots} spare slots do not fill {ep_ranks} ranks equally")
    groups = nodes if groups is None else groups
    hierarchical = (
        nodes > 1
        and ep_ranks % nodes == 0
        and redundant_slots % nodes == 0
        and experts % groups == 0
        and groups % nodes == 0
    )
    if not hierarchical:
        copies = replicate_hot_experts(expert_loads, slots, ep_ranks)
        held = pack_replicas(expert_loads, copies, ep_ranks)
        placed = [tuple(h) for h in held]
        return ExpertPlacement(tuple(keep_in_place(placed, current, 1) if current else placed), experts)
    group_size, ranks_per_node = experts // groups, ep_ranks // nodes
    group_loads = [math.fsum(expert_loads[g * group_size : (g + 1) * group_size]) for g in range(groups)]
    node_groups = pack_replicas(group_loads, [1] * groups, nodes)
    rank_experts: list[tuple[int, ...]] = []
    for node in range(nodes):
        local = [g * group_size + i for g in sorted(node_groups[node]) for i in range(group_size)]
        local_loads = [expert_loads[e] for e in local]
        copies = replicate_hot_experts(local_loads, slots // nodes, ranks_per_node)
        held = pack_replicas(local_loads, copies, ranks_per_node)
        rank_experts.extend(tuple(local[i] for i in h) for h in held)
    if current:
        rank_experts = keep_in_place(rank_experts, current, nodes)
    return ExpertPlacement(tuple(rank_experts), experts)


def keep_in_place(
    rank_experts: Sequence[tuple[int, ...]], current: Sequence[Sequence[int]], blocks: int = 1
) -> list[tuple[int, ...]]:
    """Relabel the ranks of a placement so that as many of its replicas as possible are already where `current`
    (per expert, its ranks) has them. Only whole ranks move, and only within each of `blocks` equal runs of
    ranks (nodes), so every rank's load and every node's experts stay as planned.

    Greedy on the overlap counts (largest first; ties to the lower ranks): a rank pair sharing k experts saves k
    transfers. Not always the best assignment (that would be a matching), but linear in the replicas held.
    """
    ranks = len(rank_experts)
    per_block = ranks // blocks
    overlap = [0] * (ranks * ranks)  # [new_rank * ranks + old_rank]: replicas they share
    touched: list[int] = []
    for new_rank, experts in enumerate(rank_experts):
        first = new_rank // per_block * per_block
        base = new_rank * ranks
        for expert in experts:
            for old_rank in current[expert] if expert < len(current) else ():
                if first <= old_rank < first + per_block:
                    key = base + old_rank
                    if not overlap[key]:
                        touched.append(key)
                    overlap[key] += 1
    # Counts are at most the slots per rank: bucket them instead of sorting every pair by a key function.
    buckets: dict[int, list[int]] = {}
    for key in touched:
        buckets.setdefault(overlap[key], []).append(key)
    label: dict[int, int] = {}
    taken: set[int] = set()
    for count in sorted(buckets, reverse=True):
        for key in sorted(buckets[count]):
            new_rank, old_rank = divmod(key, ranks)
            if new_rank not in label and old_rank not in taken:
                label[new_rank] = old_rank
                taken.add(old_rank)
    for block in range(blocks):
        free = (r for r in range(block * per_block, (block + 1) * per_block) if r not in taken)
        for new_rank in range(block * per_block, (block + 1) * per_block):
            if new_rank not in label:
                label[new_rank] = next(free)
    relabelled: list[tuple[int, ...]] = [()] * ranks
    for new_rank, experts in enumerate(rank_experts):
        relabelled[label[new_rank]] = experts
    return relabelled


def imbalance(rank_loads: Sequence[float]) -> float:
    """max / mean rank load (1.0 is perfect), the figure EPLB is judged by."""
    mean = math.fsum(rank_loads) / len(rank_loads)
    return max(rank_loads) / mean if mean > 0 else 1.0
