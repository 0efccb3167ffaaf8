"""Which EP rank holds which expert, and moving experts (weights and optimizer state) to a new placement.

A placement of one MoE layer lists, per *physical slot* p = rank·L + j (L slots per rank), the expert in it.
The model's router keeps speaking expert ids (its bias, its balancing loss and the token counts the rebalancer
reads are per expert); only the dispatcher and the checkpoint translate between ids and slots. Moving an expert
changes where its rows are computed, not what is computed: the same weights see the same rows in the same order,
so the loss does not change (tests/integration/test_rebalance_live.py).

Replicated (hot) experts, as DeepSeek's EPLB redundant experts: with `rebalance.expertSpareSlots` S every rank
holds E/P + S slots from the start, so a hot expert can sit in several slots (at most one per rank) without any
parameter changing shape. Each source rank sends an expert's rows to one of its replicas (`route`), so the rows
are split over the holders; the replicas' gradients are summed over their holders after backward
(expert_replicas.py), which keeps replicas and their AdamW state identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moeops.bus.expert_start import starting_rank_experts

from .tensor_parallel import local
from .topology import Axis

EXPERT_PARAMS = ("w1_EFD", "w2_EDF", "w3_EFD")
OPTIM_KEYS = ("exp_avg", "exp_avg_sq")


class Placement:
    """One layer's experts over an EP group: `expert_of_slot[p]`, and `slot_of_expert[e]` (its first slot).

    Every expert is in at least one slot and at most once per rank; with more slots than experts some are
    replicated (`slots_of(e)` lists all of an expert's slots)."""

    def __init__(self, expert_of_slot: Sequence[int], ranks: int, experts: int | None = None) -> None:
        slots = list(expert_of_slot)
        experts = len(slots) if experts is None else experts
        per_rank = len(slots) // ranks if ranks >= 1 else 0
        ok = ranks >= 1 and per_rank >= 1 and len(slots) % ranks == 0 and set(slots) == set(range(experts))
        if ok and any(len(set(slots[r * per_rank : (r + 1) * per_rank])) != per_rank for r in range(ranks)):
            ok = False  # an expert twice on one rank
        if not ok:
            raise ValueError(f"not a placement of {experts} experts on {ranks} ranks: {slots}")
        self.ranks, self.per_rank, self.experts = ranks, per_rank, experts
        self.expert_of_slot = torch.tensor(slots, dtype=torch.long)
        self._slots: list[list[int]] = [[] for _ in range(experts)]
        for slot, expert in enumerate(slots):
            self._slots[expert].append(slot)
        self.slot_of_expert = torch.tensor([found[0] for found in self._slots], dtype=torch.long)
        self.replicated = len(slots) > experts
        self.identity = not self.replicated and slots == list(range(experts))
        self._routes: dict[int, Tensor] = {}

    @classmethod
    def contiguous(cls, experts: int, ranks: int, spare: int = 0) -> Placement:
        """How every run starts (`moeops.bus.expert_start`, the placement the rebalancer also plans from): rank r
        holds experts r·L … r·L+L-1 (how `shard_experts` starts), then its `spare` slots hold replicas of the
        experts that follow its own, wrapping around: (r+1)·L, (r+1)·L+1, … mod E."""
        rank_experts = starting_rank_experts(experts, ranks, spare)
        return cls([expert for held in rank_experts for expert in held], ranks, experts)

    @classmethod
    def from_replicas(cls, replicas: Sequence[Sequence[int]], ranks: int, per_rank: int | None = None) -> Placement:
        """From a plan's per-expert rank lists (distinct ranks each); slots within a rank ordered by expert id.
        `per_rank`: the slots every rank must have (E/P + spare slots; default: E/P, no replication)."""
        per_rank = len(replicas) // ranks if per_rank is None else per_rank
        rank_experts: list[list[int]] = [[] for _ in range(ranks)]
        for expert, holders in enumerate(replicas):
            if not holders or len(set(holders)) != len(holders) or not all(0 <= h < ranks for h in holders):
                where = f"expert {expert} is placed on {list(holders)}"
                raise ValueError(f"{where}: one or more distinct ranks in [0, {ranks}) expected")
            for holder in holders:
                rank_experts[holder].append(expert)
        counts = [len(experts) for experts in rank_experts]
        if any(count != per_rank for count in counts):
            raise ValueError(f"ranks hold {counts} expert slots; each rank has {per_rank}")
        return cls([e for experts in rank_experts for e in experts], ranks, len(replicas))

    def experts_on(self, rank: int) -> Tensor:
        return self.expert_of_slot[rank * self.per_rank : (rank + 1) * self.per_rank]

    def slots_of(self, expert: int) -> list[int]:
        return list(self._slots[expert])

    def rank_of(self, expert: int) -> int:
        """The rank of the expert's first slot."""
        return self._slots[expert][0] // self.per_rank

    def holders(self, expert: int) -> list[int]:
        return [slot // self.per_rank for slot in self._slots[expert]]

    def route(self, source: int) -> Tensor:
        """Per expert, the slot that rank `source` sends its rows to: its own replica when it holds one, else
        replica i mod k for the i-th of the ranks that do not hold the expert (k replicas) — the sources spread
        evenly over the replicas, the same on every rank."""
        if source in self._routes:
            return self._routes[source]
        chosen = []
        for slots in self._slots:
            holders = [slot // self.per_rank for slot in slots]
            if source in holders:
                chosen.append(slots[holders.index(source)])
            else:
                outsiders = [r for r in range(self.ranks) if r not in holders]
                chosen.append(slots[outsiders.index(source) % len(slots)])
        route = self._routes[source] = torch.tensor(chosen, dtype=torch.long)
        return route

    def primary(self, rank: int) -> Tensor:
        """Which of `rank`'s slots hold their expert's first replica (what a norm counts once)."""
        slots = torch.arange(rank * self.per_rank, (rank + 1) * self.per_rank)
        return self.slot_of_expert[self.experts_on(rank)] == slots

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Placement) and torch.equal(self.expert_of_slot, other.expert_of_slot)

    def __hash__(self) -> int:
        return hash(tuple(self.expert_of_slot.tolist()))


def gather_blocks(sizes: Tensor, starts: Tensor) -> Tensor:
    """Row indices that lay out blocks (given in their new order by size and old start) one after another."""
    total = int(sizes.sum())
    block_of_row = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    first_row_of_block = torch.cumsum(sizes, 0) - sizes
    return starts[block_of_row] + torch.arange(total) - first_row_of_block[block_of_row]


def slot_counts(counts_E: Tensor, placement: Placement, source: int) -> Tensor:
    """Rows rank `source` sends each physical slot: all of an expert's rows to the replica it routes them to."""
    counts = counts_E.cpu()
    routed = placement.route(source)[placement.expert_of_slot] == torch.arange(placement.expert_of_slot.numel())
    return counts[placement.expert_of_slot] * routed


def rows_by_slot(counts_E: Tensor, placement: Placement, source: int = 0) -> Tensor:
    """The permutation that takes rows sorted by expert id to rows sorted by physical slot (as `source` routes
    them: each expert's rows all go to one of its slots)."""
    counts = counts_E.cpu()
    starts_E = torch.cumsum(counts, 0) - counts
    return gather_blocks(slot_counts(counts, placement, source), starts_E[placement.expert_of_slot])


def _exchange(t: Tensor, old: Placement, new: Placement, ep: Axis) -> Tensor:
    """This rank's rows of `t` (one per local slot) re-dealt for `new`: every rank sends each destination the
    rows of its slots that the destination takes from it next, in the destination's slot order, with one
    all_to_all_single. A destination takes an expert from itself when it holds it already (a local copy), else
    from the current holder `old.route` picks for it (any holder has the same, identical replica)."""
    me, per_rank = ep.rank, old.per_rank
    assert new.per_rank == per_rank, "expert slots per rank are fixed for a run"
    source_slot = [old.route(dest) for dest in range(ep.size)]  # per destination, per expert: the slot it copies
    send_rows: list[int] = []
    send_sizes: list[int] = []
    for dest in range(ep.size):
        rows = [int(source_slot[dest][e]) - me * per_rank for e in new.experts_on(dest).tolist()]
        rows = [row for row in rows if 0 <= row < per_rank]
        send_rows += rows
        send_sizes.append(len(rows))
    incoming = [int(source_slot[me][e]) // per_rank for e in new.experts_on(me).tolist()]
    recv_sizes = [incoming.count(source) for source in range(ep.size)]
    received = t.new_empty((per_rank, *t.shape[1:]))
    dist.all_to_all_single(received, t[send_rows].contiguous(), recv_sizes, send_sizes, group=ep.group)
    # Received rows are grouped by source, in my slot order within each source: put them back in slot order.
    source_start = [sum(recv_sizes[:s]) for s in range(ep.size)]
    taken = [0] * ep.size
    order = []
    for source in incoming:
        order.append(source_start[source] + taken[source])
        taken[source] += 1
    return received[order]


@torch.no_grad()
def move_experts(
    experts: nn.Module, optimizer: torch.optim.Optimizer, ep: Axis, old: Placement, new: Placement
) -> None:
    """Re-deal one layer's GroupedExperts and their AdamW moments over the EP group from `old` to `new`, in
    place: parameters and optimizer state keep their identity (the optimizer holds on to them)."""
    if old == new:
        return
    for name in EXPERT_PARAMS:
        param = getattr(experts, name)
        state = optimizer.state.get(param, {})
        for tensor in [local(param)] + [local(state[key]) for key in OPTIM_KEYS if key in state]:
            tensor.copy_(_exchange(tensor, old, new, ep))
