"""The device mesh of a run: pipeline × data × tensor ranks, with expert parallelism carved out of data.

Rank layout (tensor innermost, so a tensor-parallel group stays inside a node; pipeline outermost, so stages
span nodes): rank = ((pp · EDP + edp) · EP + ep) · TP + tp. The data-parallel group of a rank is the
(edp, ep) plane at its pipeline stage and tensor index; its expert-parallel group is the ep row inside it
and the replicas of its expert shard are the edp column (as in torchtitan and Megatron-Core).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from moeops.api.v1alpha1.runtime import ParallelPlan

from .distributed import World


@dataclass(frozen=True)
class Axis:
    """One dimension of the mesh as this rank sees it: its size, its index along it, its process group."""

    size: int
    rank: int
    group: Any
    """None when the axis has size 1 (nothing to communicate)."""

    @property
    def active(self) -> bool:
        return self.size > 1


SOLO = Axis(size=1, rank=0, group=None)


def all_reduce(t: Tensor, axis: Axis) -> Tensor:
    """Sum over the axis's group, in place (a no-op for a size-1 axis)."""
    if axis.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=axis.group)
    return t


@dataclass(frozen=True)
class Topology:
    pp: Axis
    dp: Axis
    tp: Axis
    ep: Axis
    edp: Axis
    """Replicas of this rank's expert shard (the data-parallel ranks holding the same experts)."""
    tp_mesh: DeviceMesh | None
    """The 1-D tensor-parallel mesh DTensor shards over, when tp > 1."""
    dp_mesh: DeviceMesh | None = None
    """The 1-D data-parallel mesh FSDP shards over (edp × ep flattened), when data > 1."""
    expert_plane: Axis = SOLO
    """The EP group × the tensor group: together its ranks hold one copy of every routed expert."""

    @property
    def first_stage(self) -> bool:
        return self.pp.rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp.rank == self.pp.size - 1


def _axis(mesh: DeviceMesh, name: str) -> Axis:
    size = mesh[name].size()
    return Axis(size, mesh.get_local_rank(name), mesh.get_group(name) if size > 1 else None)


def build_topology(world: World, plan: ParallelPlan) -> Topology:
    if not world.distributed:
        return Topology(SOLO, SOLO, SOLO, SOLO, SOLO, None)
    edp = plan.data // plan.expert
    mesh = init_device_mesh(
        world.device.type, (plan.pipeline, edp, plan.expert, plan.tensor), mesh_dim_names=("pp", "edp", "ep", "tp")
    )
    dp_mesh = mesh["edp", "ep"]._flatten("dp")
    dp = Axis(plan.data, dp_mesh.get_local_rank(), dp_mesh.get_group() if plan.data > 1 else None)
    plane_mesh = mesh["ep", "tp"]._flatten("ep_tp")
    plane_size = plan.expert * plan.tensor
    plane = Axis(plane_size, plane_mesh.get_local_rank(), plane_mesh.get_group() if plane_size > 1 else None)
    return Topology(
        pp=_axis(mesh, "pp"),
        dp=dp,
        tp=_axis(mesh, "tp"),
        ep=_axis(mesh, "ep"),
        edp=_axis(mesh, "edp"),
        tp_mesh=mesh["tp"] if plan.tensor > 1 else None,
        dp_mesh=dp_mesh if plan.data > 1 else None,
        expert_plane=plane,
    )
