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
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from moeops.api.v1alpha1.runtime import ParallelPlan

from .expert_parallel import moe_layers
from .expert_placement import EXPERT_PARAMS
from .stage import TransformerStage
from .tensor_parallel import apply_tensor_parallel
from .topology import Topology


class GatherClock:
    """Seconds spent in FSDP's pre-forward all-gathers: a rank that arrives early waits there for a slower
    one, and that wait is not its own compute (the rebalancer compares ranks by compute time)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def attach(self, modules: Iterable[nn.Module]) -> None:
        # FSDP's own pre-forward hook is prepended: ours prepended after it runs before it, ours appended after.
        for module in modules:
            module.register_forward_pre_hook(self._start, prepend=True)
            module.register_forward_pre_hook(self._stop)

    def _start(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started


def routed_expert_params(model: nn.Module) -> set[nn.Parameter]:
    return {getattr(moe.experts, name) for _, moe in moe_layers(model) for name in EXPERT_PARAMS}


def apply_fsdp(model: TransformerStage, mesh: DeviceMesh, ignored: set[nn.Parameter]) -> list[FSDPModule]:
    """Blocks first (each its own unit), the root last: it takes what no block holds."""
    units: list[FSDPModule] = []
    for block in model.blocks.values():
        units.append(fully_shard(block, mesh=mesh, ignored_params=ignored & set(block.parameters()) or None))
    units.append(fully_shard(model, mesh=mesh, ignored_params=ignored or None))
    return units


def parallelize(model: TransformerStage, topo: Topology, plan: ParallelPlan) -> GatherClock | None:
    """Shard `model` in place; returns the clock of its all-gathers when FSDP runs (data degree > 1)."""
    if topo.tp_mesh is not None:
        apply_tensor_parallel(model, topo.tp_mesh)
    model.activation_checkpointing = plan.activation_checkpointing
    if topo.dp_mesh is None:
        return None
    experts = routed_expert_params(model) if topo.ep.active else set()
    units = apply_fsdp(model, topo.dp_mesh, experts)
    clock = GatherClock()
    clock.attach(unit for unit in units if isinstance(unit, nn.Module))
    return clock
