"""The keys and values an early-exiting token leaves in the layers it skipped, in one matmul for all of them.

When a token exits after layer l of L, layers l+1..L still need its keys and values at that position (CALM's
state propagation: computed from the exiting hidden state h). Layer by layer (Transformer.propagate_kv) that
is, per skipped layer, an RMSNorm, two projections, a rotary embedding and two cache writes: on a small model
decoding one token, ~10 small operations per layer whose dispatch costs more than their arithmetic, paid on
exactly the tokens that were meant to be cheap.

Here, once per model: every layer's K and V projections with its attention norm's gain folded into their input
columns (RMSNorm(h)·g then W is (h·r) W' with W' = W·diag(g), r = 1/rms(h)), stacked as one weight of rows
[k_1, v_1, k_2, v_2, …]. A token exiting after layer l takes the rows of the layers after it (a contiguous
view): one norm factor, one matmul, one rotary embedding for all skipped layers, one write for the keys and
one for the values of the cache's layer range. The folded weight is a copy of the K/V projections (2·L·D·D_kv
numbers), rebuilt when a parameter changes in place (load_state_dict) or is replaced.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from .kv_cache import KVCache
from .transformer import Block, Transformer, apply_rope


def _parts(model: Transformer) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(norm gain, K weight, V weight) of every layer."""
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for block in model.blocks:
        assert isinstance(block, Block)
        norm, attn = block.attention_norm, block.attention
        assert norm.weight is not None, "attention norms carry a gain (elementwise_affine)"
        parts.append((norm.weight, attn.wk.weight, attn.wv.weight))
    return parts


def _signature(parts: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[tuple[int, int], ...]:
    """Identity and in-place version of every tensor folded in: a change to any makes the fold stale."""
    return tuple((id(t), t._version) for part in parts for t in part)


class SkippedLayersKV:
    """The folded K/V weights of one model; `fill` writes a token's entries in the layers it skipped."""

    def __init__(self, model: Transformer) -> None:
        parts = _parts(model)
        self.signature = _signature(parts)
        self.layers = len(parts)
        self.kv_dim = parts[0][1].shape[0]  # a tensor-parallel shard has fewer K/V columns than d_model
        with torch.no_grad():
            rows = [w * gain[None, :] for gain, wk, wv in parts for w in (wk, wv)]
            self.weight_RD = torch.cat(rows).contiguous()
        norm = model.blocks[0].attention_norm
        assert isinstance(norm, torch.nn.RMSNorm)
        self.eps = norm.eps
        self.rope_SF2 = model.rope_SF2

    @torch.no_grad()
    def fill(self, h_BSD: Tensor, first: int, cache: KVCache, start: int) -> None:
        """Keys and values of layers [first, L) (0-based) at positions [start, start+S) from hidden state
        `h_BSD` taken as each of those layers' input; the caller advances the cache."""
        if not 0 <= first < self.layers:
            return
        B, S, _ = h_BSD.shape
        if start != cache.length or start + S > cache.capacity:
            raise ValueError(f"positions [{start}, {start + S}) are not the next of a cache filled to {cache.length}")
        skipped = self.layers - first
        eps = self.eps if self.eps is not None else torch.finfo(h_BSD.dtype).eps
        h = h_BSD.float()
        scaled = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(h_BSD.dtype)
        kv_BSX = scaled @ self.weight_RD[2 * first * self.kv_dim :].T
        head_dim = cache.keys_LBHCd.shape[-1]
        # (B, S, layers, k|v, H, d) → (layers, k|v, B, H, S, d)
        kv = kv_BSX.view(B, S, skipped, 2, -1, head_dim).permute(2, 3, 0, 4, 1, 5)
        keys = apply_rope(kv[:, 0].reshape(skipped * B, -1, S, head_dim), self.rope_SF2[start : start + S])
        cache.keys_LBHCd[first:, :, :, start : start + S] = keys.view(skipped, B, -1, S, head_dim)
        cache.values_LBHCd[first:, :, :, start : start + S] = kv[:, 1]


_FOLDED: weakref.WeakKeyDictionary[Transformer, SkippedLayersKV] = weakref.WeakKeyDictionary()


def skipped_layers_kv(model: Transformer) -> SkippedLayersKV:
    """The model's folded K/V weights, folded again when one of their parameters changed since."""
    folded = _FOLDED.get(model)
    if folded is None or folded.signature != _signature(_parts(model)):
        folded = _FOLDED[model] = SkippedLayersKV(model)
    return folded
