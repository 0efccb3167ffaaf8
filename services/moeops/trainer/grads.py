"""Gradients of the parameters DDP does not own, and the global gradient-norm clip.

DDP all-reduces the replicated parameters over the data-parallel group. Sharded ones differ by rank and are
reduced here over the ranks that hold the *same* shard: a tensor-parallel shard over the data-parallel group,
an expert shard over its edp replicas (tokens of the whole EP group already reached it by all-to-all), after
the replicas of a hot expert within the EP group have summed theirs (expert_replicas.py).
Every rank's loss is scaled by the data-parallel degree D (DDP averages), so a sum over replicas divided by
D is the gradient of the global mean loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

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
    experts: dict[int, ExpertDispatcher] = {}
    if topo.ep.active:
        for module, dispatcher in expert_layers(model):
            experts.update({id(getattr(module, name)): dispatcher for name in EXPERT_PARAMS})
    found = []
    for p in model.parameters():
        is_expert, is_tensor = id(p) in experts, tensor_sharded(p)
        if is_expert or is_tensor:
            found.append(ShardedParam(p, topo.edp if is_expert else topo.dp, is_expert, is_tensor, experts.get(id(p))))
    return found


def sharded_param_names(model: nn.Module, topo: Topology) -> list[str]:
    """What DDP must ignore (names as `named_parameters` gives them)."""
    ids = {id(s.param) for s in sharded_params(model, topo)}
    return [name for name, p in model.named_parameters() if id(p) in ids]


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


def clip_grad_norm(model: nn.Module, params: list[ShardedParam], topo: Topology, max_norm: float) -> float:
    """Clip by the norm of the whole (unsharded, all stages) model's gradient: equals
    nn.utils.clip_grad_norm_ on the single-process model. Replicated parameters count once."""
    kinds = {id(s.param): (s.expert, s.tensor) for s in params}
    primary = {  # a replicated expert counts once: only the rows of each expert's first slot
        id(s.param): s.experts_of.placement.primary(topo.ep.rank)
        for s in params
        if s.experts_of is not None and s.experts_of.placement.replicated
    }
    with_grads = [p for p in model.parameters() if p.grad is not None]
    device = local(with_grads[0]).device if with_grads else torch.device("cpu")
    squares = {
        kind: torch.zeros((), device=device) for kind in ((False, False), (True, False), (False, True), (True, True))
    }
    for p in with_grads:
        assert p.grad is not None
        grad = local(p.grad)
        if id(p) in primary:
            grad = grad[primary[id(p)].to(grad.device)]
        squares[kinds.get(id(p), (False, False))] += grad.float().square().sum()
    # Tensor-sharded: experts summed over their EP group first, then everything over the TP group.
    tensor_part = all_reduce(squares[True, True], topo.ep) + squares[False, True]
    stage = all_reduce(tensor_part, topo.tp) + all_reduce(squares[True, False], topo.ep) + squares[False, False]
    total = float(all_reduce(stage, topo.pp).sqrt())
    coef = max_norm / (total + 1e-6)  # as torch.nn.utils.clip_grad_norm_ does
    if coef < 1.0:
        for p in with_grads:
            assert p.grad is not None
            local(p.grad).mul_(coef)
    return total
