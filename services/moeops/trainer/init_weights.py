"""Start-up on the meta device: a rank builds its part of the model without storage, shards it, and only then
allocates and initialises what it holds, so no rank ever materialises the whole model.

The initial weights must not depend on the layout (the parity tests compare every layout with one process), so
each value is a function of the seed, the parameter's full-model name and its row (index along dim 0) alone:
row r of `blocks.3.attention.wq.weight` is drawn from a generator seeded with (seed, name, r), whichever rank holds
it and however the row is cut. A rank draws only the rows it holds (FSDP and pipeline shards are row ranges,
expert shards are expert ids) and keeps the columns its tensor-parallel shard holds. The distribution is the
model's own (`moeops.model.transformer.init_std`: truncated normal, norms at one).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from moeops.api.v1alpha1.presets import Architecture
from moeops.model.moe import Router
from moeops.model.transformer import init_std, rope_cache

from .expert_parallel import expert_layers
from .expert_placement import EXPERT_PARAMS
from .stage import TransformerStage
from .tensor_parallel import held_part, local

_MIX = 0x9E3779B97F4A7C15  # the golden-ratio constant: spreads (seed, name, row) over the 64-bit seed space


def row_seed(seed: int, name: str, row: int) -> int:
    """The generator seed of one row of one parameter: the same on every rank and in every layout."""
    mixed = (seed * _MIX + zlib.crc32(name.encode())) * _MIX + row
    return mixed % (2**63 - 1)


def fill(p: Tensor, name: str, std: float, seed: int, rows: Sequence[int] | None = None) -> None:
    """Fill this rank's part of `p` (global rows `rows`, default: its dim-0 range) with its layout-free values."""
    target = local(p)
    shape, offset = held_part(p)
    if rows is None:
        rows = range(offset[0], offset[0] + shape[0])
    columns = tuple(slice(start, start + size) for start, size in zip(offset[1:], shape[1:], strict=True))
    generator = torch.Generator()
    row = torch.empty(p.shape[1:])
    for i, r in enumerate(rows):
        generator.manual_seed(row_seed(seed, name, r))
        nn.init.trunc_normal_(row, std=std, generator=generator)
        target[i].copy_(row[columns])


def _expert_rows(model: nn.Module, ep_rank: int) -> dict[int, list[int]]:
    """Under expert parallelism, the expert id of each slot row an expert parameter holds."""
    rows: dict[int, list[int]] = {}
    for experts, dispatcher in expert_layers(model):
        ids = dispatcher.placement.experts_on(ep_rank).tolist()
        rows.update({id(getattr(experts, name)): ids for name in EXPERT_PARAMS})
    return rows


def materialise(
    model: TransformerStage, arch: Architecture, seed: int, device: torch.device, ep_rank: int | None
) -> None:
    """Allocate `model` (built and sharded on the meta device) on `device` and initialise it. `ep_rank`: this
    rank's index in its EP group when the experts are split (expert parallelism), else None."""
    model.to_empty(device=device)
    expert_rows = _expert_rows(model, ep_rank) if ep_rank is not None else {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = init_std(name, p.dim(), arch.layers)
            if std is None:
                local(p).fill_(1.0)
            else:
                fill(p, name, std, seed, expert_rows.get(id(p)))
        model.rope_SF2.copy_(rope_cache(arch.seq_len, arch.d_model // arch.heads))
        for module in model.modules():
            if isinstance(module, Router):
                module.selection_bias_E.zero_()
