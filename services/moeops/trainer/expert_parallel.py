"""Expert parallelism: the ranks of an EP group each hold E/P of every MoE layer's experts (plus any spare
slots: replicas of hot experts, expert_placement.py); a token's row travels to a rank that holds its expert and
back with all_to_all_single (gloo has no list-form all_to_all).

The EP groups are carved out of the data-parallel ranks (as in torchtitan and Megatron): with data degree D
and expert degree P, ranks form a (D/P) × P mesh; a row of the mesh is an EP group, a column is the group of
replicas of one expert shard ("edp"). Expert parameters are therefore not replicated over all ranks: FSDP
ignores them and `grads.sync_sharded_grads` reduces them over their replicas instead (see topology.py).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor.api import ShardedTensor
from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata, TensorProperties
from torch.distributed._shard.sharded_tensor.shard import Shard
from torch.distributed.tensor import DTensor

from moeops.model.moe import GroupedExperts, MoE

from .expert_placement import EXPERT_PARAMS, OPTIM_KEYS, Placement, gather_blocks, rows_by_slot, slot_counts
from .tensor_parallel import held_part, local
from .topology import Axis


def _expert_major(recv_PL: Tensor) -> Tensor:
    """Rows arrive grouped by source rank, then local expert; the permutation that groups them by local
    expert, then source (what the grouped matmul needs)."""
    sizes_PL = recv_PL
    starts_PL = (torch.cumsum(sizes_PL.flatten(), 0) - sizes_PL.flatten()).view_as(sizes_PL)
    return gather_blocks(sizes_PL.T.flatten(), starts_PL.T.flatten())  # expert-major block order


class ExpertDispatcher:
    """Runs a MoE layer's sorted rows on the experts' owning ranks (installed on MoE.dispatcher)."""

    def __init__(self, ep: Axis, placement: Placement) -> None:
        self.ep = ep
        self.placement = placement
        """Which slot holds which expert; the trainer swaps it when it moves experts (expert_placement.py)."""

    def __call__(self, x_AD: Tensor, counts_E: Tensor, experts: GroupedExperts) -> Tensor:
        placement = self.placement
        if placement.identity:
            return self._by_slot(x_AD, counts_E, experts)
        # Rows come sorted by expert id: regroup them by slot (each expert's rows to the replica this rank
        # routes them to; none to its other replicas), run, and put the outputs back in id order.
        perm_A = rows_by_slot(counts_E, placement, self.ep.rank).to(x_AD.device)
        counts_S = slot_counts(counts_E, placement, self.ep.rank).to(counts_E.device)
        out_AD = self._by_slot(x_AD[perm_A], counts_S, experts)
        return torch.empty_like(out_AD).index_copy(0, perm_A, out_AD)

    def _by_slot(self, x_AD: Tensor, counts_E: Tensor, experts: GroupedExperts) -> Tensor:
        """x_AD sorted by physical slot, counts_E per slot."""
        P, L, group = self.ep.size, self.placement.per_rank, self.ep.group
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


def shard_experts(model: nn.Module, ep: Axis, spare: int = 0) -> None:
    """Keep the experts of this rank's slots in every layer (all ranks built the same full model first, so the
    sharded model starts from exactly the weights of a single-process run): E/P of its own and `spare`
    replicas (`Placement.contiguous`)."""
    for _, moe in moe_layers(model):
        placement = Placement.contiguous(moe.experts.experts, ep.size, spare)
        mine = placement.experts_on(ep.rank)
        for name in EXPERT_PARAMS:
            full = getattr(moe.experts, name)
            setattr(moe.experts, name, nn.Parameter(full.detach()[mine].clone()))
        moe.experts.experts = placement.per_rank
        moe.dispatcher = ExpertDispatcher(ep, placement)


def expert_layers(model: nn.Module) -> list[tuple[GroupedExperts, ExpertDispatcher]]:
    """Every MoE layer's experts and the dispatcher that holds their current placement."""
    found = []
    for _, moe in moe_layers(model):
        assert isinstance(moe.dispatcher, ExpertDispatcher), "shard_experts installs the dispatcher first"
        found.append((moe.experts, moe.dispatcher))
    return found


class ExpertStateSharding:
    """Checkpoints hold expert tensors in expert-id order at their full size, so a checkpoint restores at any
    expert degree, any placement and any number of spare slots. Saving writes each rank's own rows where they
    are, no gather: the rows of its slots that hold their expert's first replica (spare-slot copies are left
    out), as chunks of a ShardedTensor of the full shape (DTensor cannot describe rows at arbitrary expert ids).
    DCP writes each chunk once (expert-data replicas offer the same ones). Loading reads the rows of this rank's
    slots only, straight into buffers of their size (`local_placeholders`)."""

    def __init__(self, model: nn.Module, ep: Axis, plane: Axis) -> None:
        """`plane`: the ranks that together hold one copy of every expert (the EP group × the tensor group)."""
        self.layers = moe_layers(model)
        self.ep, self.plane = ep, plane
        self._loading: list[Tensor] = []
        """The tensors that local_placeholders stood buffers in for, in _tensors' order."""

    def placement(self, moe: MoE) -> Placement:
        assert isinstance(moe.dispatcher, ExpertDispatcher), "shard_experts installs the dispatcher first"
        return moe.dispatcher.placement

    def _tensors(
        self, model_sd: dict[str, Any], optim_sd: dict[str, Any]
    ) -> list[tuple[dict[str, Any], str, Placement]]:
        """(container, key, placement) of every expert tensor in the model and optimizer state dicts."""
        found = []
        states = optim_sd.get("state", {})
        for layer, moe in self.layers:
            placement = self.placement(moe)
            for param in EXPERT_PARAMS:
                name = f"{layer}.experts.{param}"
                found.append((model_sd, name, placement))
                if name not in states:
                    continue
                # A copy: the optimizer state dict shares these per-parameter dicts with the live optimizer.
                state = states[name] = dict(states[name])
                found += [(state, key, placement) for key in OPTIM_KEYS if key in state]
        return found

    def _runs(self, placement: Placement) -> list[tuple[int, int, int]]:
        """(first slot, first expert, rows) of this rank's primary slots, consecutive experts merged."""
        runs: list[list[int]] = []
        primary = placement.primary(self.ep.rank).tolist()
        for slot, (first, expert) in enumerate(zip(primary, placement.experts_on(self.ep.rank).tolist(), strict=True)):
            if not first:
                continue
            if runs and runs[-1][0] + runs[-1][2] == slot and runs[-1][1] + runs[-1][2] == expert:
                runs[-1][2] += 1
            else:
                runs.append([slot, expert, 1])
        return [(slot, expert, rows) for slot, expert, rows in runs]

    def for_save(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
        """Replace every expert tensor by a ShardedTensor of its full shape over this rank's primary rows."""
        found = self._tensors(model_sd, optim_sd)
        mine: list[list[tuple[Tensor, list[int], list[int]]]] = []
        for container, key, placement in found:
            t = container[key]
            rows = local(t)
            _, offset = held_part(t)
            mine.append([(rows[slot : slot + n], [expert, *offset[1:]], [n, *rows.shape[1:]])
                         for slot, expert, n in self._runs(placement)])  # fmt: skip
        # ShardedTensor checks that the chunks tile the tensor: every rank of the plane needs everyone's list.
        described = [[(offsets, sizes) for _, offsets, sizes in pieces] for pieces in mine]
        everyone: list[Any] = [None] * self.plane.size
        dist.all_gather_object(everyone, (dist.get_rank(), str(local(found[0][0][found[0][1]]).device), described),
                               group=self.plane.group)  # fmt: skip
        for i, ((container, key, placement), pieces) in enumerate(zip(found, mine, strict=True)):
            t = container[key]
            chunks = [ShardMetadata(offsets, sizes, f"rank:{rank}/{device}")
                      for rank, device, lists in everyone for offsets, sizes in lists[i]]  # fmt: skip
            here = f"rank:{dist.get_rank()}/{local(t).device}"
            shards = [Shard(view, ShardMetadata(offsets, sizes, here)) for view, offsets, sizes in pieces]
            full = torch.Size([placement.experts, *t.shape[1:]])
            metadata = ShardedTensorMetadata(chunks, full, TensorProperties(dtype=t.dtype))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*deprecating ShardedTensor", category=FutureWarning)
                container[key] = ShardedTensor._init_from_local_shards_and_global_metadata(shards, metadata)

    def local_placeholders(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
        """Replace every expert tensor by a buffer of this rank's slots only (replicas too), each slot a chunk at
        its expert's row of the full tensor (DCP's CheckpointableTensor fields: a plain tensor that names where
        its rows sit in the global one). DCP reads only those rows: no rank allocates the full expert tensor."""
        self._loading = []
        for container, key, placement in self._tensors(model_sd, optim_sd):
            t = container[key]
            rows, (_, offset) = local(t), held_part(t)
            experts = placement.experts_on(self.ep.rank).tolist()
            buffer = container[key] = torch.empty_like(rows)
            buffer.global_shape = (placement.experts, *t.shape[1:])  # type: ignore[attr-defined]
            buffer.global_offsets = tuple((e, *offset[1:]) for e in experts)  # type: ignore[attr-defined]
            buffer.local_offsets = tuple((slot, *(0,) * (rows.dim() - 1)) for slot in range(len(experts)))  # type: ignore[attr-defined]
            buffer.local_sizes = ((1, *rows.shape[1:]),) * len(experts)  # type: ignore[attr-defined]
            self._loading.append(t)

    def keep_local(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
        """The loaded buffers in place of the tensors they stood for (a tensor-parallel DTensor keeps its mesh)."""
        found = self._tensors(model_sd, optim_sd)
        for (container, key, _), original in zip(found, self._loading, strict=True):
            loaded = container[key].detach()  # without the chunk fields
            container[key] = (
                DTensor.from_local(loaded, original.device_mesh, original.placements, run_check=False)
                if isinstance(original, DTensor)
                else loaded
            )
        self._loading = []
