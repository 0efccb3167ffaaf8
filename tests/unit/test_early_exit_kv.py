"""The skipped layers' keys and values in one matmul (moeops.model.early_exit_kv) against the layer-by-layer
propagation it replaces (Transformer.propagate_kv, CALM's state propagation)."""

from __future__ import annotations

import pytest
import torch

from moeops.api.v1alpha1.presets import Architecture
from moeops.model import Transformer
from moeops.model.early_exit_kv import skipped_layers_kv
from moeops.model.kv_cache import KVCache
from moeops.model.transformer import Block

ARCH = Architecture(layers=4, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=24, seq_len=48)


def _model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ARCH).eval()
    with torch.no_grad():  # gains away from 1, so that a fold that forgot them fails
        for block in model.blocks:
            assert isinstance(block, Block) and block.attention_norm.weight is not None
            block.attention_norm.weight.uniform_(0.5, 1.5)
    return model


def _caches(model: Transformer, prefix: int) -> tuple[KVCache, KVCache]:
    tokens = torch.randint(0, ARCH.vocab_size, (2, prefix), generator=torch.Generator().manual_seed(prefix))
    caches = []
    for _ in range(2):
        cache = model.new_kv_cache(batch=2, capacity=16)
        with torch.no_grad():
            model.forward_cached(tokens, cache)
        caches.append(cache)
    return caches[0], caches[1]


@pytest.mark.parametrize(("first", "positions"), [(1, 1), (2, 1), (3, 1), (1, 3), (0, 2)])
def test_one_matmul_writes_what_layer_by_layer_propagation_writes(first: int, positions: int) -> None:
    model = _model(first)
    fused, reference = _caches(model, prefix=5)
    h_BSD = torch.randn(2, positions, ARCH.d_model) * 3
    with torch.no_grad():
        model.propagate_kv(h_BSD, range(first, ARCH.layers), reference, 5)
    skipped_layers_kv(model).fill(h_BSD, first, fused, 5)
    written = slice(5, 5 + positions)
    assert fused.keys_LBHCd[first:, :, :, written].abs().sum() > 0
    torch.testing.assert_close(fused.keys_LBHCd, reference.keys_LBHCd)
    torch.testing.assert_close(fused.values_LBHCd, reference.values_LBHCd)
    assert fused.length == 5  # the caller advances


def test_the_fold_follows_new_weights() -> None:
    model = _model(7)
    before = skipped_layers_kv(model)
    assert skipped_layers_kv(model) is before  # folded once
    model.load_state_dict(_model(8).state_dict())  # copies in place
    fused, reference = _caches(model, prefix=3)
    h_BSD = torch.randn(2, 1, ARCH.d_model)
    skipped_layers_kv(model).fill(h_BSD, 1, fused, 3)
    with torch.no_grad():
        model.propagate_kv(h_BSD, range(1, ARCH.layers), reference, 3)
    assert skipped_layers_kv(model) is not before
    torch.testing.assert_close(fused.keys_LBHCd, reference.keys_LBHCd)


def test_a_write_away_from_the_next_position_is_refused() -> None:
    model = _model(9)
    fused, _ = _caches(model, prefix=4)
    with pytest.raises(ValueError, match="not the next"):
        skipped_layers_kv(model).fill(torch.randn(2, 1, ARCH.d_model), 1, fused, 6)
