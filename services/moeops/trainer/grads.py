"""Gradients of the parameters FSDP does not own, and the global gradient-norm clip.

FSDP2 reduce-scatters the gradients of what it shards over the data-parallel group (parallelize.py). What it
does not own is reduced here over the ranks that hold the *same* shard: a routed expert shard under expert
parallelism over its edp replicas (tokens of the whole EP group already reached it by all-to-all), after the
replicas of a hot expert within the EP group have summed theirs (expert_replicas.py); a tensor-parallel shard
when there is no data parallelism (nothing to reduce then).
Every rank's loss is scaled by the data-parallel degree D (FSDP averages), so a sum over replicas divided by
D is the gradient of the global mean loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from .expert_parallel import ExpertDispatcher, expert_layers
from .expert_placement import EXPERT_PARAMS
from .expert_replicas import sum_replica_grads
from .tensor_parallel import local, tensor_sharded
from .topology import Axis, Topology, all_reduce


@dataclass(frozen=True)
class ShardedParam:
    param: nn.Parameter
    replicas: Axis
    """The ranks holding the same shard (their gradients are summed)."""
    expert: bool
    tensor: bool
    experts_of: ExpertDispatcher | None = None
    """An expert parameter's layer dispatcher: its current placement (which slots are replicas)."""


def sharded_params(model: nn.Module, topo: Topology) -> list[ShardedParam]:
    """After `parallelize`: with data parallelism FSDP owns every parameter but the routed experts under EP."""
    experts: dict[int, ExpertDispatcher] = {}
    if topo.ep.active:
        for module, dispatcher in expert_layers(model):
            experts.update({id(getattr(module, name)): dispatcher for name in EXPERT_PARAMS})
    found = []
    for p in model.parameters():
        is_expert, is_tensor = id(p) in experts, tensor_sharded(p)
        if is_expert or (is_tensor and not topo.dp.active):
            found.append(ShardedParam(p, topo.edp if is_expert else topo.dp, is_expert, is_tensor, experts.get(id(p))))
    return found


def sync_sharded_grads(params: list[ShardedParam], dp_size: int, ep: Axis | None = None) -> None:
    """`ep`: the EP group, over which replicated experts' gradients are summed first."""
    for s in params:
        if s.param.grad is None:
            # An expert shard that received no rows this step: a zero gradient, as the single-process model
            # gets for an idle expert (so AdamW decays it the same way), and every replica reduces alike.
            s.param.grad = torch.zeros_like(s.param)
    if ep is not None:
        replicas = [(s.param.grad, s.experts_of.placement) for s in params if s.experts_of is not None]
        sum_replica_grads([(local(grad), placement) for grad, placement in replicas if grad is not None], ep)
    for s in params:
        assert s.param.grad is not None
        grad = local(s.param.grad)
        if s.replicas.active:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=s.replicas.group)
        grad.div_(dp_size)


def _reduce_groups(p: nn.Parameter, expert: bool, ep: Axis) -> tuple[Any, ...]:
    """The process groups over which `p` is split (its squared-gradient sum is summed over them): the mesh
    dimensions a DTensor is sharded on (FSDP's data dimension, the tensor dimension), and the EP group for a
    routed expert under expert parallelism."""
    groups: list[Any] = []
    if isinstance(p, DTensor):
        mesh = p.device_mesh
        groups += [mesh.get_group(dim) for dim, place in enumerate(p.placements) if place.is_shard()]
    if expert and ep.active:
        groups.append(ep.group)
    return tuple(groups)


def clip_grad_norm(model: nn.Module, params: list[ShardedParam], topo: Topology, max_norm: float) -> float:
    """Clip by the norm of the whole (unsharded, all stages) model's gradient: equals
    nn.utils.clip_grad_norm_ on the single-process model. Replicated parameters count once."""
    experts = {id(s.param) for s in params if s.expert}
    primary = {  # a replicated expert counts once: only the rows of each expert's first slot
        id(s.param): s.experts_of.placement.primary(topo.ep.rank)
        for s in params
        if s.experts_of is not None and s.experts_of.placement.replicated
    }
    everything = list(model.parameters())
    device = local(everything[0]).device if everything else torch.device("cpu")
    # One partial sum per set of groups, keyed by their ranks: the same keys in the same order on every rank of
    # a stage (from the parameters, not from which have gradients), so the collectives below match up.
    squares: dict[tuple[tuple[int, ...], ...], tuple[tuple[Any, ...], Tensor]] = {}
    for p in everything:
        groups = _reduce_groups(p, id(p) in experts, topo.ep)
        key = tuple(tuple(dist.get_process_group_ranks(g)) for g in groups)
        _, total = squares.setdefault(key, (groups, torch.zeros((), device=device)))
        if p.grad is None:
            continue
        grad = local(p.grad)
        if id(p) in primary:
            grad = grad[primary[id(p)].to(grad.device)]
        total += grad.float().square().sum()
    stage = torch.zeros((), device=device)
    for groups, total in squares.values():
        for group in groups:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        stage += total
    norm = float(all_reduce(stage, topo.pp).sqrt())
    coef = max_norm / (norm + 1e-6)  # as torch.nn.utils.clip_grad_norm_ does
    if coef < 1.0:
        for p in everything:
            if p.grad is not None:
                local(p.grad).mul_(coef)
    return norm
