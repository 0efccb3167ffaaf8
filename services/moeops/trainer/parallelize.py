"""One `parallelize` step from a rank's part of the model to what it trains, in torchtitan's order:
tensor parallelism → activation checkpointing → FSDP2 (`fully_shard`) over the data-parallel mesh dimension.

FSDP2 shards every parameter it owns over the data-parallel ranks of this rank's pipeline stage and tensor
index (dim 0, ZeRO-3 style): weights, gradients and AdamW state are 1/D per rank, each block all-gathered for
its forward and again for its backward, its gradient reduce-scattered (averaged over D, as DDP did: the loss is
scaled by D, see runners.py). With tensor parallelism the TP DTensors become 2-D (data × tensor) DTensors.
One FSDP unit per block, the root holding the embedding, final norm and head.

Under expert parallelism the routed experts are already split over the EP group and FSDP ignores them: they
stay replicated over their expert-data (edp) column, whose gradients `grads.sync_sharded_grads` all-reduces.
The planner counts them that way (`planning/memory.py`); sharding them over edp as well is the next step.

When the plan asks for optimizer offload, FSDP2's CPUOffloadPolicy keeps its shards and their AdamW state in host
memory (the experts under expert parallelism are not FSDP's: they and their state stay on the device).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

# FSDP2's interfaces for custom collectives are public methods on FSDPModule, their argument types not yet exported.
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter

from moeops.api.v1alpha1.runtime import ParallelPlan

from .expert_parallel import moe_layers
from .expert_placement import EXPERT_PARAMS
from .stage import TransformerStage
from .tensor_parallel import apply_tensor_parallel
from .topology import Topology


class CollectiveClock:
    """Seconds this rank spends in FSDP's collectives: every all-gather (forward and backward) and reduce-scatter.

    A rank that arrives early at a collective waits there for the slower ones, and that wait is not its own compute:
    the rebalancer compares ranks by compute time, so a wait counted as compute makes the rank with less data look
    slow, and it is then given even less (seen live: shares drifting from [32, 32] to [63, 1] between two equal
    ranks). FSDP2 lets us supply the collectives (`set_custom_all_gather`, `set_custom_reduce_scatter`): ours are
    torch's defaults, timed. They run synchronously on the host here (FSDP2 asks for no async op on CPU, and the
    reduce-scatter is always issued without one), so the time includes the wait. On CUDA the host only enqueues NCCL
    work, so this clock sees launch time, not device-side waits.
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def attach(self, units: Iterable[FSDPModule]) -> None:
        for unit in units:
            unit.set_custom_all_gather(_TimedAllGather(self))
            unit.set_custom_reduce_scatter(_TimedReduceScatter(self))


class _TimedAllGather(AllGather):
    def __init__(self, clock: CollectiveClock) -> None:
        self._clock = clock

    def allocate(self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup, async_op: bool = False
    ) -> dist.Work | None:
        started = time.perf_counter()
        try:
            return dist.all_gather_into_tensor(output_tensor, input_tensor, group=group, async_op=async_op)
        finally:
            self._clock.seconds += time.perf_counter() - started


class _TimedReduceScatter(ReduceScatter):
    def __init__(self, clock: CollectiveClock) -> None:
        self._clock = clock

    def allocate(self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        op: Any,
        async_op: bool = False,
    ) -> dist.Work | None:
        started = time.perf_counter()
        try:
            return dist.reduce_scatter_tensor(output_tensor, input_tensor, op=op, group=group, async_op=async_op)
        finally:
            self._clock.seconds += time.perf_counter() - started


def routed_expert_params(model: nn.Module) -> set[nn.Parameter]:
    return {getattr(moe.experts, name) for _, moe in moe_layers(model) for name in EXPERT_PARAMS}


def apply_fsdp(
    model: TransformerStage, mesh: DeviceMesh, ignored: set[nn.Parameter], offload: bool = False
) -> list[FSDPModule]:
    """Blocks first (each its own unit), the root last: it takes what no block holds. `offload`: FSDP2's
    CPUOffloadPolicy, the plan's optimizer offload: the shards (weights, gradients) live in host memory, so the
    optimizer's state is created and stepped there; each block is copied to the device for its all-gather."""
    policy = CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda") if offload else OffloadPolicy()
    units: list[FSDPModule] = []
    for block in model.blocks.values():
        ignored_here = ignored & set(block.parameters()) or None
        units.append(fully_shard(block, mesh=mesh, ignored_params=ignored_here, offload_policy=policy))
    units.append(fully_shard(model, mesh=mesh, ignored_params=ignored or None, offload_policy=policy))
    return units


def offloaded_params(model: nn.Module) -> set[int]:
    """Ids of the parameters whose shards FSDP2 keeps in host memory (CPUOffloadPolicy). From FSDP's parameter
    groups (private): on a CPU run the device is the host, so a tensor's device cannot tell."""
    found: set[int] = set()
    for module in model.modules():
        if isinstance(module, FSDPModule) and (group := module._get_fsdp_state()._fsdp_param_group) is not None:
            found.update(id(fp.sharded_param) for fp in group.fsdp_params if fp.offload_to_cpu)
    return found


def parallelize(model: TransformerStage, topo: Topology, plan: ParallelPlan) -> CollectiveClock | None:
    """Shard `model` in place; returns the clock of its collectives when FSDP runs (data degree > 1)."""
    if topo.tp_mesh is not None:
        apply_tensor_parallel(model, topo.tp_mesh)
    model.activation_checkpointing = plan.activation_checkpointing
    if topo.dp_mesh is None:
        return None
    experts = routed_expert_params(model) if topo.ep.active else set()
    units = apply_fsdp(model, topo.dp_mesh, experts, offload=plan.optimizer_offload)
    clock = CollectiveClock()
    clock.attach(units)
    return clock
