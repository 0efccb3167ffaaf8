"""Replicated experts on two gloo processes, one MoE layer's experts alone: the dispatcher splits a replicated
expert's rows over its replicas and the outputs and the summed gradients match the unsharded experts; moving to
another replicated placement copies every slot from a holder of its expert; a checkpoint saves one replica per
expert without gathering and loads, into another placement, only each rank's slots, every slot from its expert."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from moeops.model.moe import GroupedExperts, MoE
from moeops.trainer.expert_parallel import ExpertDispatcher, ExpertStateSharding, shard_experts
from moeops.trainer.expert_placement import EXPERT_PARAMS, Placement, move_experts
from moeops.trainer.expert_replicas import sum_replica_grads
from moeops.trainer.topology import Axis

pytestmark = pytest.mark.slow  # two spawned gloo processes

EXPERTS, DIM, HIDDEN, ROWS = 4, 8, 16, 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rows(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank's rows sorted by expert, and the rows per expert (expert 0 hot)."""
    generator = torch.Generator().manual_seed(10 + rank)
    experts_A = torch.multinomial(torch.tensor([0.5, 0.2, 0.2, 0.1]), ROWS, True, generator=generator).sort().values
    return torch.randn(ROWS, DIM, generator=generator), torch.bincount(experts_A, minlength=EXPERTS)


def _worker(rank: int, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        _check(Axis(size=2, rank=rank, group=dist.group.WORLD), folder)
    finally:
        dist.destroy_process_group()


def _check(ep: Axis, folder: Path) -> None:
    torch.manual_seed(0)
    full = GroupedExperts(DIM, HIDDEN, EXPERTS)
    for name in EXPERT_PARAMS:
        nn.init.normal_(getattr(full, name), std=0.3)
    moe = MoE(DIM, HIDDEN, EXPERTS, top_k=2)
    moe.experts.load_state_dict(full.state_dict())
    model = nn.ModuleDict({"moe": moe})
    shard_experts(model, ep, spare=1)  # slots: 0 1 2 | 2 3 0
    dispatcher = moe.dispatcher
    assert isinstance(dispatcher, ExpertDispatcher) and dispatcher.placement.replicated

    # Forward and backward of both ranks' rows, against the unsharded experts on all rows.
    x_AD, counts_E = _rows(ep.rank)
    x_AD.requires_grad_(True)
    out = dispatcher(x_AD, counts_E, moe.experts)
    out.square().sum().backward()
    grads = [(getattr(moe.experts, name).grad, dispatcher.placement) for name in EXPERT_PARAMS]
    sum_replica_grads([(g, p) for g, p in grads if g is not None], ep)
    for r in range(2):
        x_r, counts_r = _rows(r)
        full(x_r, counts_r).square().sum().backward()  # accumulates both ranks' gradients
    expected_out = full(x_AD.detach(), counts_E)
    torch.testing.assert_close(out, expected_out)
    mine = dispatcher.placement.experts_on(ep.rank)
    for name in EXPERT_PARAMS:
        torch.testing.assert_close(getattr(moe.experts, name).grad, getattr(full, name).grad[mine])

    # A move to another replicated placement: every slot holds its expert's weights afterwards.
    optimizer = torch.optim.AdamW(moe.experts.parameters(), lr=0.01)
    optimizer.step()
    optimizer.zero_grad()
    weights = _gathered(moe, ep)
    new = Placement.from_replicas([[1], [0, 1], [0], [1, 0]], ranks=2, per_rank=3)  # slots: 1 2 3 | 0 1 3
    move_experts(moe.experts, optimizer, ep, dispatcher.placement, new)
    dispatcher.placement = new
    for name in EXPERT_PARAMS:
        torch.testing.assert_close(
            getattr(moe.experts, name).detach(), weights[name][new.experts_on(ep.rank)], rtol=0, atol=0
        )

    # Checkpoint round trip: saved as each rank's own rows of the expert-id ordered tensor (each expert once,
    # from its first slot, no gather), then every slot filled from its expert.
    sharding = ExpertStateSharding(model, ep, ep)
    model_sd = {f"moe.experts.{n}": getattr(moe.experts, n).detach().clone() for n in EXPERT_PARAMS}
    sharding.for_save(model_sd, {})
    for name in EXPERT_PARAMS:
        saved = model_sd[f"moe.experts.{name}"]
        assert saved.size() == weights[name].shape
        chunks = saved.metadata().shards_metadata
        rows = sorted(r for c in chunks for r in range(c.shard_offsets[0], c.shard_offsets[0] + c.shard_sizes[0]))
        assert rows == list(range(EXPERTS)), rows  # every expert once: spare-slot replicas left out
        for shard in saved.local_shards():
            first, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            torch.testing.assert_close(shard.tensor, weights[name][first : first + count], rtol=0, atol=0)
    dcp_save(model_sd, checkpoint_id=folder)

    # Loaded into another placement (the starting one: slots 0 1 2 | 2 3 0): DCP reads only this rank's slots,
    # straight into buffers of their size (no full-size placeholder), every slot from its expert's rows.
    dispatcher.placement = other = Placement.contiguous(EXPERTS, 2, 1)
    model_sd = {f"moe.experts.{n}": torch.zeros_like(getattr(moe.experts, n)) for n in EXPERT_PARAMS}
    sharding.local_placeholders(model_sd, {})
    assert all(model_sd[f"moe.experts.{n}"].shape[0] == other.per_rank < EXPERTS for n in EXPERT_PARAMS)
    dcp_load(model_sd, checkpoint_id=folder)
    sharding.keep_local(model_sd, {})
    for name in EXPERT_PARAMS:
        expected = weights[name][other.experts_on(ep.rank)]
        torch.testing.assert_close(model_sd[f"moe.experts.{name}"], expected, rtol=0, atol=0)


def _gathered(moe: MoE, ep: Axis) -> dict[str, Any]:
    """Every expert's weights in id order, from each expert's first slot (replicas must agree)."""
    assert isinstance(moe.dispatcher, ExpertDispatcher)
    placement = moe.dispatcher.placement
    found = {}
    for name in EXPERT_PARAMS:
        parts = [torch.empty_like(getattr(moe.experts, name)) for _ in range(ep.size)]
        dist.all_gather(parts, getattr(moe.experts, name).detach().contiguous())
        slots = torch.cat(parts)
        for expert in range(EXPERTS):
            for slot in placement.slots_of(expert):
                assert torch.equal(slots[slot], slots[placement.slots_of(expert)[0]]), (name, expert)
        found[name] = slots[placement.slot_of_expert]
    return found


def test_replicated_experts_on_two_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), tmp_path), nprocs=2, join=True)  # type: ignore[attr-defined]
