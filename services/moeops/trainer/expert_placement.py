"""Which EP rank holds which expert, and moving experts (weights and optimizer state) to a new placement.

A placement of one MoE layer lists, per *physical slot* p = rank·L + j (L experts per rank), the expert in it.
The model's router keeps speaking expert ids (its bias, its balancing loss and the token counts the rebalancer
reads are per expert); only the dispatcher and the checkpoint translate between ids and slots. Moving an expert
changes where its rows are computed, not what is computed: the same weights see the same rows in the same order,
so the loss does not change (tests/integration/test_rebalance_live.py).

The trainer moves experts without replication (each expert in exactly one slot per EP group); the rebalancer's
planner can replicate hot experts, which needs a split of their rows and a gradient reduction among replicas that
the trainer does not do yet, so such a plan's placement is refused (see plans.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .tensor_parallel import local
from .topology import Axis

EXPERT_PARAMS = ("w1_EFD", "w2_EDF", "w3_EFD")
OPTIM_KEYS = ("exp_avg", "exp_avg_sq")


class Placement:
    """One layer's experts over an EP group: `expert_of_slot[p]` and its inverse `slot_of_expert[e]`."""

    def __init__(self, expert_of_slot: Sequence[int], ranks: int) -> None:
        experts = len(expert_of_slot)
        if ranks < 1 or experts % ranks or sorted(expert_of_slot) != list(range(experts)):
            raise ValueError(f"not a placement of {experts} experts on {ranks} ranks: {list(expert_of_slot)}")
        self.ranks, self.per_rank = ranks, experts // ranks
        self.expert_of_slot = torch.tensor(list(expert_of_slot), dtype=torch.long)
        self.slot_of_expert = torch.empty_like(self.expert_of_slot)
        self.slot_of_expert[self.expert_of_slot] = torch.arange(experts)
        self.identity = bool(torch.equal(self.expert_of_slot, torch.arange(experts)))

    @classmethod
    def contiguous(cls, experts: int, ranks: int) -> Placement:
        """Rank r holds experts r·L … r·L+L-1 (how `shard_experts` starts)."""
        return cls(range(experts), ranks)

    @classmethod
    def from_replicas(cls, replicas: Sequence[Sequence[int]], ranks: int) -> Placement:
        """From a plan's per-expert rank lists (one rank each); slots within a rank ordered by expert id."""
        rank_experts: list[list[int]] = [[] for _ in range(ranks)]
        for expert, holders in enumerate(replicas):
            if len(holders) != 1 or not 0 <= holders[0] < ranks:
                raise ValueError(f"expert {expert} is placed on {list(holders)}: one rank in [0, {ranks}) expected")
            rank_experts[holders[0]].append(expert)
        if len({len(experts) for experts in rank_experts}) != 1:
            raise ValueError(f"ranks hold different numbers of experts: {[len(e) for e in rank_experts]}")
        return cls([e for experts in rank_experts for e in experts], ranks)

    def experts_on(self, rank: int) -> Tensor:
        return self.expert_of_slot[rank * self.per_rank : (rank + 1) * self.per_rank]

    def rank_of(self, expert: int) -> int:
        return int(self.slot_of_expert[expert]) // self.per_rank

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


def rows_by_slot(counts_E: Tensor, placement: Placement) -> Tensor:
    """The permutation that takes rows sorted by expert id to rows sorted by physical slot."""
    counts = counts_E.cpu()
    starts_E = torch.cumsum(counts, 0) - counts
    order = placement.expert_of_slot
    return gather_blocks(counts[order], starts_E[order])


def _exchange(t: Tensor, old: Placement, new: Placement, ep: Axis) -> Tensor:
    """This rank's rows of `t` (one per local slot) re-dealt for `new`: every rank sends each destination the
    rows of its experts that the destination holds next, in the destination's slot order (an expert staying put
    goes to itself: a local copy), with one all_to_all_single."""
    me, per_rank = ep.rank, old.per_rank
    mine_before = {int(e): j for j, e in enumerate(old.experts_on(me))}
    send_rows: list[int] = []
    send_sizes: list[int] = []
    for dest in range(ep.size):
        rows = [mine_before[int(e)] for e in new.experts_on(dest) if int(e) in mine_before]
        send_rows += rows
        send_sizes.append(len(rows))
    incoming = [old.rank_of(int(e)) for e in new.experts_on(me)]
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
