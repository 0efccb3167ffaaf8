"""Keeping the replicas of a hot expert identical: after backward each replica holds the gradient of the rows
routed to it (a part of the expert's rows, expert_placement.route), so the gradients of an expert's replicas
are summed over the EP ranks that hold it before anything else uses them (the edp reduction, the norm clip,
AdamW). Every replica then takes the same step from the same state and stays bit-identical to the others.

One all-reduce over the EP group per step, of a buffer holding only the replicated experts' gradients (zeros
where a rank holds no replica); nothing when no expert is replicated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .expert_placement import Placement
from .topology import Axis


def _replicated(placement: Placement, rank: int) -> tuple[list[int], list[int]]:
    """This rank's slots (local index) holding a replicated expert, and that expert's index among the
    replicated ones (in expert-id order)."""
    index = {e: i for i, e in enumerate(e for e in range(placement.experts) if len(placement.slots_of(e)) > 1)}
    mine = placement.experts_on(rank).tolist()
    local_slots = [j for j, e in enumerate(mine) if e in index]
    return local_slots, [index[mine[j]] for j in local_slots]


def replicas_count(placement: Placement) -> int:
    return sum(1 for e in range(placement.experts) if len(placement.slots_of(e)) > 1)


@torch.no_grad()
def sum_replica_grads(grads: Sequence[tuple[Tensor, Placement]], ep: Axis) -> None:
    """`grads`: this rank's (local) gradient of an expert parameter, one row per slot, with its layer's
    placement. Each replicated expert's rows become the sum over its holders, in place."""
    pieces: list[tuple[Tensor, Tensor, list[int], list[int]]] = []
    for grad, placement in grads:
        if not placement.replicated:
            continue
        local_slots, index = _replicated(placement, ep.rank)
        buffer = grad.new_zeros((replicas_count(placement), *grad.shape[1:]))
        if local_slots:
            buffer[index] = grad[local_slots]
        pieces.append((grad, buffer, local_slots, index))
    if not pieces or not ep.active:
        return
    flat = torch.cat([buffer.flatten() for _, buffer, _, _ in pieces])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=ep.group)
    offset = 0
    for grad, buffer, local_slots, index in pieces:
        summed = flat[offset : offset + buffer.numel()].view_as(buffer)
        offset += buffer.numel()
        if local_slots:
            grad[local_slots] = summed[index]
