"""A decoder-only transformer whose feed-forward blocks are MoE layers (or dense, for the baselines)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moeops.api.v1alpha1.presets import Architecture

from .kv_cache import KVCache
from .moe import MoE, SwiGLU

FFNKind = Literal["moe", "dense-active", "dense-total"]


def rope_cache(seq_len: int, head_dim: int, base: float = 10000.0) -> Tensor:
    """cos/sin of rotary position embeddings, shape (S, head_dim/2, 2)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles_SF = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return torch.stack([angles_SF.cos(), angles_SF.sin()], dim=-1)


def apply_rope(x_BHSd: Tensor, cache_SF2: Tensor) -> Tensor:
    x1, x2 = x_BHSd.float().view(*x_BHSd.shape[:-1], -1, 2).unbind(-1)
    cos, sin = cache_SF2[..., 0], cache_SF2[..., 1]
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.flatten(-2).to(x_BHSd.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"d_model ({dim}) must be a multiple of heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x_BSD: Tensor, rope_SF2: Tensor) -> Tensor:
        B, S, _ = x_BSD.shape
        # Heads from the projection's output size, so a tensor-parallel shard (fewer columns) works unchanged.
        q, k, v = (w(x_BSD).view(B, S, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = apply_rope(q, rope_SF2[:S]), apply_rope(k, rope_SF2[:S])
        y_BHSd = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: Tensor = self.wo(y_BHSd.transpose(1, 2).reshape(B, S, -1))
        return out

    def kv(self, x_BSD: Tensor, rope_SF2: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Rotated keys and values (B, H, S, d) of positions [start, start+S)."""
        B, S, _ = x_BSD.shape
        k, v = (w(x_BSD).view(B, S, -1, self.head_dim).transpose(1, 2) for w in (self.wk, self.wv))
        return apply_rope(k, rope_SF2[start : start + S]), v

    def forward_cached(self, x_BSD: Tensor, rope_SF2: Tensor, cache: KVCache, layer: int, start: int) -> Tensor:
        """Attention of positions [start, start+S) over the cached prefix and themselves; stores their K/V."""
        B, S, _ = x_BSD.shape
        q = apply_rope(self.wq(x_BSD).view(B, S, -1, self.head_dim).transpose(1, 2), rope_SF2[start : start + S])
        keys_BHKd, values_BHKd = cache.write(layer, start, *self.kv(x_BSD, rope_SF2, start))
        if S == 1:  # one new token sees every cached position: no mask
            y_BHSd = F.scaled_dot_product_attention(q, keys_BHKd, values_BHKd)
        elif start == 0:  # a prefill: the training forward's own causal attention
            y_BHSd = F.scaled_dot_product_attention(q, keys_BHKd, values_BHKd, is_causal=True)
        else:  # a chunk after a prefix: new position i sees keys up to start + i
            visible_SK = torch.ones(S, start + S, dtype=torch.bool, device=x_BSD.device).tril(diagonal=start)
            y_BHSd = F.scaled_dot_product_attention(q, keys_BHKd, values_BHKd, attn_mask=visible_SK)
        out: Tensor = self.wo(y_BHSd.transpose(1, 2).reshape(B, S, -1))
        return out


@dataclass
class BlockOutput:
    x_BSD: Tensor
    aux_loss: Tensor
    z_loss: Tensor
    tokens_per_expert_E: Tensor | None


class Block(nn.Module):
    def __init__(self, arch: Architecture, ffn: FFNKind, capacity_factor: float | None) -> None:
        super().__init__()
        d = arch.d_model
        self.attention_norm = nn.RMSNorm(d)
        self.attention = Attention(d, arch.heads)
        self.ffn_norm = nn.RMSNorm(d)
        self.moe: MoE | None = None
        self.dense: SwiGLU | None = None
        if ffn == "moe":
            self.moe = MoE(d, arch.ffn_hidden, arch.experts, arch.top_k, arch.shared_experts, capacity_factor)
        else:
            width = arch.top_k if ffn == "dense-active" else arch.experts
            self.dense = SwiGLU(d, arch.ffn_hidden * (width + arch.shared_experts))

    def forward(self, x_BSD: Tensor, rope_SF2: Tensor) -> BlockOutput:
        x_BSD = x_BSD + self.attention(self.attention_norm(x_BSD), rope_SF2)
        h_BSD = self.ffn_norm(x_BSD)
        zero = x_BSD.new_zeros((), dtype=torch.float32)
        if self.moe is None:
            assert self.dense is not None
            return BlockOutput(x_BSD + self.dense(h_BSD), zero, zero, None)
        out = self.moe(h_BSD.reshape(-1, h_BSD.shape[-1]))
        return BlockOutput(x_BSD + out.out_TD.view_as(x_BSD), out.aux_loss, out.z_loss, out.tokens_per_expert_E)

    def forward_cached(self, x_BSD: Tensor, rope_SF2: Tensor, cache: KVCache, layer: int, start: int) -> Tensor:
        """The block on positions [start, start+S) with cached attention (inference: no balancing losses)."""
        x_BSD = x_BSD + self.attention.forward_cached(self.attention_norm(x_BSD), rope_SF2, cache, layer, start)
        h_BSD = self.ffn_norm(x_BSD)
        if self.moe is None:
            assert self.dense is not None
            ffn_BSD: Tensor = self.dense(h_BSD)
        else:
            ffn_BSD = self.moe(h_BSD.reshape(-1, h_BSD.shape[-1])).out_TD.view_as(x_BSD)
        return x_BSD + ffn_BSD

    def fill_kv(self, h_BSD: Tensor, rope_SF2: Tensor, cache: KVCache, layer: int, start: int) -> None:
        """Store K/V computed from `h_BSD` taken as this block's input, without running the block: CALM's
        propagation of an exiting token's state to the layers it skipped."""
        cache.write(layer, start, *self.attention.kv(self.attention_norm(h_BSD), rope_SF2, start))


@dataclass
class ModelOutput:
    logits_BSV: Tensor
    aux_loss: Tensor
    """Sum over layers of the load-balancing loss (0 for dense models)."""
    z_loss: Tensor
    tokens_per_expert_LE: Tensor | None
    """Assignments per expert for each MoE layer this step (the rebalancer's input)."""
    hidden_states: list[Tensor] = field(default_factory=list)
    """Each block's output (B, S, D), when asked for: the inputs of early-exit heads."""


def init_std(name: str, dims: int, layers: int) -> float | None:
    """The initial standard deviation of parameter `name` (truncated normal), None for norms (they keep their
    ones). The trainer initialises its shards with it too (moeops.trainer.init_weights)."""
    if dims < 2:
        return None
    is_output = name.endswith(("wo.weight", "w2.weight", "w2_EDF"))
    return 0.02 / math.sqrt(2 * layers) if is_output else 0.02


class Transformer(nn.Module):
    rope_SF2: Tensor

    def __init__(self, arch: Architecture, ffn: FFNKind = "moe", capacity_factor: float | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.embedding = nn.Embedding(arch.vocab_size, arch.d_model)
        self.blocks = nn.ModuleList(Block(arch, ffn, capacity_factor) for _ in range(arch.layers))
        self.norm = nn.RMSNorm(arch.d_model)
        self.head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.register_buffer("rope_SF2", rope_cache(arch.seq_len, arch.d_model // arch.heads), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style: N(0, 0.02), output projections scaled down by depth (`init_std`)."""
        for name, p in self.named_parameters():
            if (std := init_std(name, p.dim(), self.arch.layers)) is not None:
                nn.init.trunc_normal_(p, std=std)

    def forward(self, tokens_BS: Tensor, *, return_hidden: bool = False) -> ModelOutput:
        x_BSD = self.embedding(tokens_BS)
        aux = z = x_BSD.new_zeros((), dtype=torch.float32)
        counts, hidden = [], []
        for block in self.blocks:
            out = block(x_BSD, self.rope_SF2)
            x_BSD, aux, z = out.x_BSD, aux + out.aux_loss, z + out.z_loss
            if out.tokens_per_expert_E is not None:
                counts.append(out.tokens_per_expert_E)
            if return_hidden:
                hidden.append(x_BSD)
        logits_BSV = self.head(self.norm(x_BSD))
        counts_LE = torch.stack(counts) if counts else None
        return ModelOutput(logits_BSV, aux, z, counts_LE, hidden)

    # -- incremental decoding (serving): the same blocks over a KV cache -------------------------------------

    def new_kv_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """An empty cache for `batch` sequences on this model's device and dtype (capacity: seq_len)."""
        ref = self.embedding.weight
        return KVCache.for_architecture(self.arch, batch, capacity, dtype=ref.dtype, device=ref.device)

    def forward_cached(self, tokens_BS: Tensor, cache: KVCache) -> Tensor:
        """Logits (B, S, V) of `tokens_BS` placed after the cache's prefix, through every layer; appends
        their K/V. A prefill is a call on an empty cache, a decoding step a call with one token."""
        start = cache.length
        x_BSD = self.embedding(tokens_BS)
        for layer in range(len(self.blocks)):
            x_BSD = self.forward_layer_cached(layer, x_BSD, cache, start)
        cache.advance(tokens_BS.shape[1])
        return self.exit_logits(x_BSD)

    def forward_layer_cached(self, layer: int, x_BSD: Tensor, cache: KVCache, start: int) -> Tensor:
        """Block `layer` (0-based) on positions [start, start+S); the caller advances the cache."""
        return self._block(layer).forward_cached(x_BSD, self.rope_SF2, cache, layer, start)

    def propagate_kv(self, h_BSD: Tensor, layers: range, cache: KVCache, start: int) -> None:
        """Fill the K/V of `layers` at [start, start+S) from hidden state `h_BSD` (an early exit's state)."""
        for layer in layers:
            self._block(layer).fill_kv(h_BSD, self.rope_SF2, cache, layer, start)

    def _block(self, layer: int) -> Block:
        block = self.blocks[layer]
        assert isinstance(block, Block)
        return block

    def exit_logits(self, h_BSD: Tensor) -> Tensor:
        """The shared exit head (LayerSkip): final norm and LM head on any layer's hidden state."""
        logits: Tensor = self.head(self.norm(h_BSD))
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
