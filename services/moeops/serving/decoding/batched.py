"""One decoding step for several sequences at once, each with its own KV cache and length: the matrix products
(projections, MoE, head) run on all rows together, attention runs per row over that row's own cache.

Only for sequences that run every layer (early exit off, or a threshold that never exits): a row that may exit
leaves at its own layer, which a batched pass cannot follow; the engine runs those through `decode.decode_step`.
Why per-row attention and not a padded (B, H, T, d) batch: the caches stay the sequences' own (no copying into a
shared padded buffer every round), the attention of a decoding token is a (1, T) product that costs little next
to the projections and experts, and each row's attention is the very operation `decode_step` runs for it.

Exactness: each row goes through the same layers and operations as `decode.decode_step` (MoE routing is per
token and dropless: a row's experts do not depend on the other rows). The products of B rows may round in the
last bit differently from one row's (BLAS picks other kernels), so logits match to float precision, and the
greedy tokens are identical unless two logits tie to that precision (the tests compare tokens with generate()).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from moeops.model import Transformer
from moeops.model.kv_cache import KVCache
from moeops.model.transformer import Block, apply_rope
from moeops.serving.decoding.decode import DecodedToken


def _rows(w: torch.nn.Module, x_BD: Tensor, head_dim: int) -> Tensor:
    """A projection of B single tokens as (B, H, 1, d)."""
    out: Tensor = w(x_BD[:, None, :])
    return out.view(x_BD.shape[0], 1, -1, head_dim).transpose(1, 2)


@torch.no_grad()
def decode_rows(model: Transformer, tokens: Sequence[int], caches: Sequence[KVCache]) -> list[DecodedToken]:
    """Feed `tokens[i]` at `caches[i]`'s next position, through every layer, for every row i at once; returns
    each row's greedy next token (exit layer: the model's depth) and advances its cache."""
    if len(tokens) != len(caches) or not tokens:
        raise ValueError("one token per cache, and at least one row")
    if any(c.batch != 1 for c in caches):
        raise ValueError("each row has a one-sequence cache")
    device = model.embedding.weight.device
    starts = [c.length for c in caches]
    rope_B1F2 = model.rope_SF2[torch.tensor(starts, device=device)][:, None, None]  # (B, 1, 1, F, 2): per-row position
    x_BD = model.embedding(torch.tensor(list(tokens), device=device))
    layers = len(model.blocks)
    for layer in range(layers):
        block = model.blocks[layer]
        assert isinstance(block, Block)
        attention = block.attention
        h_BD = block.attention_norm(x_BD)
        hd = attention.head_dim
        q_BH1d = apply_rope(_rows(attention.wq, h_BD, hd), rope_B1F2)
        k_BH1d = apply_rope(_rows(attention.wk, h_BD, hd), rope_B1F2)
        v_BH1d = _rows(attention.wv, h_BD, hd)
        ys: list[Tensor] = []
        for i, (cache, start) in enumerate(zip(caches, starts, strict=True)):
            keys, values = cache.write(layer, start, k_BH1d[i : i + 1], v_BH1d[i : i + 1])
            ys.append(F.scaled_dot_product_attention(q_BH1d[i : i + 1], keys, values))
        y_BD = torch.cat(ys).transpose(1, 2).reshape(len(caches), -1)
        x_BD = x_BD + attention.wo(y_BD)
        f_BD = block.ffn_norm(x_BD)
        if block.moe is not None:
            ffn_BD = block.moe(f_BD).out_TD
        else:
            assert block.dense is not None
            ffn_BD = block.dense(f_BD)
        x_BD = x_BD + ffn_BD
    for cache in caches:
        cache.advance(1)
    logits_BV = model.exit_logits(x_BD)
    predicted = logits_BV.argmax(dim=-1).tolist()
    return [DecodedToken(int(t), layers, float("nan"), logits_BV[i]) for i, t in enumerate(predicted)]
