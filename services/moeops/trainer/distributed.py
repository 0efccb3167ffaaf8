"""Process group and device mesh from the operator's plan: gloo on CPU, NCCL on GPU.

torchrun (the elastic launcher) sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one process.
This version composes data and expert parallelism: a plan with tensor or pipeline degrees above 1 is
refused with a configuration error rather than silently trained another way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from moeops.api.v1alpha1.runtime import ParallelPlan

from .errors import ConfigError

COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_plan(plan: ParallelPlan, world_size: int) -> None:
    product = plan.data * plan.tensor * plan.pipeline
    if product != world_size:
        raise ConfigError(
            f"plan data×tensor×pipeline = {plan.data}×{plan.tensor}×{plan.pipeline} = {product}, "
            f"but {world_size} processes were started"
        )
    unsupported = {name: getattr(plan, name) for name in ("tensor", "pipeline") if getattr(plan, name) > 1}
    if unsupported:
        degrees = ", ".join(f"{k}={v}" for k, v in unsupported.items())
        raise ConfigError(f"this trainer version runs data and expert parallel only; the plan asks for {degrees}")
    if plan.data % plan.expert:
        raise ConfigError(f"plan expert degree {plan.expert} must divide the data degree {plan.data}")


def init_world(plan: ParallelPlan) -> World:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    check_plan(plan, world_size)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over ranks, in place (a no-op for one process)."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
