"""Expert parallelism: the ranks of an EP group each hold E/P of every MoE layer's experts; a token's row
travels to the rank that holds its expert and back with all_to_all_single (gloo has no list-form all_to_all).

The EP groups are carved out of the data-parallel ranks (as in torchtitan and Megatron): with data degree D
and expert degree P, ranks form a (D/P) × P mesh; a row of the mesh is an EP group, a column is the group of
replicas of one expert shard ("edp"). Expert parameters are therefore not replicated over all ranks: DDP
ignores them and `sync_expert_grads` reduces them over their replicas instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh

from moeops.model.moe import GroupedExperts, MoE

from .distributed import World
from .errors import ConfigError

EXPERT_PARAMS = ("w1_EFD", "w2_EDF", "w3_EFD")


@dataclass(frozen=True)
class ExpertGroups:
    size: int
    """P: ranks sharing one layer's experts."""
    rank: int
    """This rank's index in its EP group: it holds experts [rank·E/P, (rank+1)·E/P)."""
    ep_group: Any
    edp_group: Any
    """Ranks holding the same expert shard (size D/P), or None when there is one replica."""
    edp_size: int


def build_expert_groups(world: World, expert: int, experts_per_layer: int) -> ExpertGroups:
    if experts_per_layer % expert or world.world_size % expert:
        raise ConfigError(
            f"expert degree {expert} must divide the experts per layer ({experts_per_layer}) and the"
            f" data-parallel degree ({world.world_size})"
        )
    mesh = init_device_mesh(world.device.type, (world.world_size // expert, expert), mesh_dim_names=("edp", "ep"))
    edp_size = world.world_size // expert
    return ExpertGroups(
        size=expert,
        rank=mesh.get_local_rank("ep"),
        ep_group=mesh.get_group("ep"),
        edp_group=mesh.get_group("edp") if edp_size > 1 else None,
        edp_size=edp_size,
    )


def _expert_major(recv_PL: Tensor) -> Tensor:
    """Rows arrive grouped by source rank, then local expert; the permutation that groups them by local
    expert, then source (what the grouped matmul needs)."""
    sizes_PL = recv_PL
    starts_PL = (torch.cumsum(sizes_PL.flatten(), 0) - sizes_PL.flatten()).view_as(sizes_PL)
    sizes, starts = sizes_PL.T.flatten(), starts_PL.T.flatten()  # expert-major block order
    total = int(sizes.sum())
    block_of_row = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    first_row_of_block = torch.cumsum(sizes, 0) - sizes
    offset_in_block = torch.arange(total) - first_row_of_block[block_of_row]
    return starts[block_of_row] + offset_in_block


class ExpertDispatcher:
    """Runs a MoE layer's sorted rows on the experts' owning ranks (installed on MoE.dispatcher)."""

    def __init__(self, groups: ExpertGroups, experts_total: int) -> None:
        self.groups = groups
        self.local = experts_total // groups.size

    def __call__(self, x_AD: Tensor, counts_E: Tensor, experts: GroupedExperts) -> Tensor:
        P, L, group = self.groups.size, self.local, self.groups.ep_group
        counts_PL = counts_E.view(P, L).contiguous()
        recv_PL = torch.empty_like(counts_PL)
        dist.all_to_all_single(recv_PL, counts_PL, group=group)  # how many rows each source sends each local expert
        send_sizes, recv_sizes = counts_PL.sum(1).tolist(), recv_PL.sum(1).tolist()  # split sizes: a host sync
        received = x_AD.new_empty((sum(recv_sizes), x_AD.shape[1]))
        x_RD = dist_fn.all_to_all_single(received, x_AD, recv_sizes, send_sizes, group=group)  # type: ignore[no-untyped-call]
        perm_R = _expert_major(recv_PL).to(x_AD.device)
        y_RD = experts(x_RD[perm_R], recv_PL.sum(0))
        back_RD = torch.empty_like(y_RD).index_copy(0, perm_R, y_RD)  # undo the regrouping
        returned = x_AD.new_empty(x_AD.shape)
        out: Tensor = dist_fn.all_to_all_single(returned, back_RD, send_sizes, recv_sizes, group=group)  # type: ignore[no-untyped-call]
        return out


def moe_layers(model: nn.Module) -> list[tuple[str, MoE]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]


def expert_param_names(model: nn.Module) -> list[str]:
    return [f"{name}.experts.{p}" for name, _ in moe_layers(model) for p in EXPERT_PARAMS]


def shard_experts(model: nn.Module, groups: ExpertGroups) -> None:
    """Keep this rank's slice of every layer's experts (all ranks built the same full model first, so the
    sharded model starts from exactly the weights of a single-process run)."""
    for _, moe in moe_layers(model):
        total = moe.experts.experts
        local = total // groups.size
        lo = groups.rank * local
        for name in EXPERT_PARAMS:
            full = getattr(moe.experts, name)
            setattr(moe.experts, name, nn.Parameter(full.detach()[lo : lo + local].clone()))
        moe.experts.experts = local
        moe.dispatcher = ExpertDispatcher(groups, total)


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [getattr(moe.experts, p) for _, moe in moe_layers(model) for p in EXPERT_PARAMS]


def sync_expert_grads(model: nn.Module, groups: ExpertGroups, world_size: int) -> None:
    """Each expert's gradient holds Σ over the ranks that sent it tokens of (world_size × their loss share):
    sum over the shard's replicas, divide by the world size — the gradient of the global mean loss."""
    for p in expert_parameters(model):
        if p.grad is None:
            continue
        if groups.edp_group is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=groups.edp_group)
        p.grad.div_(world_size)


def clip_grad_norm(model: nn.Module, groups: ExpertGroups | None, max_norm: float) -> float:
    """Clip by the norm of the *whole* model's gradient: replicated parameters count once, expert shards are
    summed over their EP group. Equals nn.utils.clip_grad_norm_ on the unsharded model."""
    sharded = {id(p) for p in expert_parameters(model)} if groups else set()
    with_grads = [p for p in model.parameters() if p.grad is not None]
    device = with_grads[0].device if with_grads else torch.device("cpu")
    squares = {True: torch.zeros((), device=device), False: torch.zeros((), device=device)}  # by "is a shard"
    for p in with_grads:
        assert p.grad is not None
        squares[id(p) in sharded] += p.grad.float().square().sum()
    if groups is not None:
        dist.all_reduce(squares[True], op=dist.ReduceOp.SUM, group=groups.ep_group)
    total = float((squares[False] + squares[True]).sqrt())
    coef = max_norm / (total + 1e-6)  # as torch.nn.utils.clip_grad_norm_ does
    if coef < 1.0:
        for p in with_grads:
            assert p.grad is not None
            p.grad.mul_(coef)
    return total


class ExpertStateSharding:
    """Checkpoints hold full expert tensors (gathered over the EP group), so a checkpoint restores at any
    expert degree: gather before saving, load into full-size placeholders, then keep this rank's slice."""

    OPTIM_KEYS = ("exp_avg", "exp_avg_sq")

    def __init__(self, model: nn.Module, groups: ExpertGroups) -> None:
        self.names = expert_param_names(model)
        self.groups = groups

    def _gather(self, t: Tensor) -> Tensor:
        parts = [torch.empty_like(t) for _ in range(self.groups.size)]
        dist.all_gather(parts, t.contiguous(), group=self.groups.ep_group)
        return torch.cat(parts)

    def _tensors(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
        """(container, key) of every expert tensor in the model and optimizer state dicts."""
        found = [(model_sd, name) for name in self.names]
        states = optim_sd.get("state", {})
        for name in self.names:
            if name not in states:
                continue
            # A copy: the optimizer state dict shares these per-parameter dicts with the live optimizer.
            state = states[name] = dict(states[name])
            found += [(state, key) for key in self.OPTIM_KEYS if key in state]
        return found

    def gather(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
        for container, key in self._tensors(model_sd, optim_sd):
            container[key] = self._gather(container[key])

    def full_placeholders(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
        for container, key in self._tensors(model_sd, optim_sd):
            local = container[key]
            container[key] = local.new_empty((local.shape[0] * self.groups.size, *local.shape[1:]))

    def keep_local(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
        for container, key in self._tensors(model_sd, optim_sd):
            full = container[key]
            local = full.shape[0] // self.groups.size
            container[key] = full[self.groups.rank * local : (self.groups.rank + 1) * local].clone()
