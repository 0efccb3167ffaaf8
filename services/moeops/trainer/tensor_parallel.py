"""Tensor parallelism with DTensor: Megatron's column/row split of attention and dense FFNs, and the routed
experts split along their hidden dimension.

Attention: q/k/v column-parallel (each rank computes heads/T heads), the output projection row-parallel (one
all-reduce). Dense and shared-expert SwiGLUs: w1/w3 column-parallel, w2 row-parallel. Routed experts: every
rank holds F/T hidden units of *every* expert (the weights are DTensors sharded on F, so checkpoints reshard
to any degree); a row's expert output is then a partial sum, completed with an all-reduce before the gates
are applied. That costs top-k times the traffic of reducing after the combine, but keeps the router, gates
and balancing losses replicated and exact: reducing later would leave each rank with a partial gate gradient.
The router, norms, embedding and output head stay replicated (the vocabularies here are small).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from moeops.model.moe import GroupedExperts, SwiGLU
from moeops.model.transformer import Attention

# The dimension of each expert weight that holds the hidden (F) units.
EXPERT_HIDDEN_DIM = {"w1_EFD": 1, "w3_EFD": 1, "w2_EDF": 2}


class _CopyToTensorRegion(torch.autograd.Function):
    """Megatron's f: identity forward; backward sums the input gradient over the tensor-parallel group
    (each rank's shard of the experts contributed part of it)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorRegion(torch.autograd.Function):
    """Megatron's g: forward sums the partial outputs over the group; the gradient of a sum is passed
    through unchanged (every rank already holds the full incoming gradient)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class ExpertTensorParallel(ParallelStyle):
    """Shards a GroupedExperts' weights on the hidden dimension; inputs through f, outputs through g."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        group = device_mesh.get_group()

        def partition(name: str, mod: nn.Module, mesh: DeviceMesh) -> None:
            if mod is not module:
                return
            for param_name, dim in EXPERT_HIDDEN_DIM.items():
                full = getattr(mod, param_name)
                mod.register_parameter(param_name, nn.Parameter(distribute_tensor(full, mesh, [Shard(dim)])))

        def before(mod: nn.Module, inputs: tuple[Tensor, Tensor], mesh: DeviceMesh) -> tuple[Tensor, Tensor]:
            x_AD, counts_E = inputs
            return _CopyToTensorRegion.apply(x_AD, group), counts_E

        def after(mod: nn.Module, y_AD: Tensor, mesh: DeviceMesh) -> Tensor:
            out: Tensor = _ReduceFromTensorRegion.apply(y_AD, group)
            return out

        return distribute_module(module, device_mesh, partition, before, after)  # type: ignore[arg-type]


def _swiglu_plan(prefix: str) -> dict[str, ParallelStyle]:
    return {f"{prefix}w1": ColwiseParallel(), f"{prefix}w3": ColwiseParallel(), f"{prefix}w2": RowwiseParallel()}


def apply_tensor_parallel(stage: nn.Module, mesh: DeviceMesh) -> None:
    """Shard every block of `stage` (a Transformer or a pipeline stage of one) over the 1-D `mesh`."""
    for module in stage.modules():
        if isinstance(module, Attention):
            plan = {"wq": ColwiseParallel(), "wk": ColwiseParallel(), "wv": ColwiseParallel(), "wo": RowwiseParallel()}
            parallelize_module(module, mesh, plan)
        elif isinstance(module, SwiGLU):
            parallelize_module(module, mesh, _swiglu_plan(""))
        elif isinstance(module, GroupedExperts):
            parallelize_module(module, mesh, ExpertTensorParallel())


def tensor_sharded(param: Tensor) -> bool:
    return isinstance(param, DTensor)


def held_part(t: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shape and global offset of the part of `t` this rank holds (all of it unless it is a DTensor)."""
    if isinstance(t, DTensor):
        shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        return tuple(shape), tuple(offset)
    return tuple(t.shape), (0,) * t.dim()


def local(t: Tensor) -> Tensor:
    """The part of `t` this rank holds (itself unless it is a DTensor)."""
    return t.to_local() if isinstance(t, DTensor) else t
