"""KV cache and incremental decoding: the cached forward reproduces the full-prefix forward."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from moeops.api.v1alpha1.presets import Architecture
from moeops.data.synthetic import greedy_generate
from moeops.model import Transformer
from moeops.model.kv_cache import KVCache

ARCH = Architecture(layers=3, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=24, seq_len=32)


def _model(dtype: torch.dtype = torch.float64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ARCH).to(dtype).eval()
    with torch.no_grad():  # a sharper head than the init's near-uniform logits: argmax ties are not the question
        model.head.weight.mul_(40.0)
    return model


def _greedy_cached(model: Transformer, prompt: Tensor, max_new: int) -> Tensor:
    cache = model.new_kv_cache(batch=1)
    logits = model.forward_cached(prompt, cache)
    new: list[int] = []
    for _ in range(max_new):
        token = int(logits[0, -1].argmax())
        new.append(token)
        if token == 2:  # EOS, as greedy_generate
            break
        logits = model.forward_cached(torch.tensor([[token]]), cache)
    return torch.tensor(new, dtype=torch.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_cached_greedy_decoding_matches_recomputing_the_prefix(seed: int) -> None:
    model = _model(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for length in (1, 4, 9):
        prompt = torch.randint(4, ARCH.vocab_size, (1, length), generator=gen)
        expected = greedy_generate(model, prompt, 16)
        assert torch.equal(_greedy_cached(model, prompt, 16), expected)


@torch.no_grad()
def test_cached_logits_match_the_training_forward_in_float32() -> None:
    model = _model(torch.float32)
    tokens = torch.randint(0, ARCH.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    full = model(tokens).logits_BSV
    cache = model.new_kv_cache(batch=2)
    # A prefill, a chunk after a prefix (the masked path), then single tokens.
    parts = [model.forward_cached(tokens[:, :5], cache), model.forward_cached(tokens[:, 5:9], cache)]
    parts += [model.forward_cached(tokens[:, i : i + 1], cache) for i in range(9, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-4, rtol=1e-4)
    assert cache.length == 12


def test_cache_refuses_overflow_and_gaps() -> None:
    cache = KVCache(layers=1, batch=1, heads=1, head_dim=2, capacity=4)
    k = torch.ones(1, 1, 2, 2)
    keys, _ = cache.write(0, 0, k, k)
    assert keys.shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="gap"):
        cache.write(0, 3, k[:, :, :1], k[:, :, :1])
    cache.advance(2)
    with pytest.raises(ValueError, match="do not fit"):
        cache.write(0, 2, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    with pytest.raises(ValueError, match="capacity"):
        KVCache.for_architecture(ARCH, 1, capacity=ARCH.seq_len + 1)
    model = _model()
    cache = model.new_kv_cache(batch=1, capacity=4)
    with pytest.raises(ValueError, match="do not fit"):
        model.forward_cached(torch.zeros(1, 5, dtype=torch.int64), cache)
