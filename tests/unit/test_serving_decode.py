"""Early-exit decoding: rules, policy, the never-exit baseline, exits at min_layer, and CALM's KV propagation."""

from __future__ import annotations

import math

import pytest
import torch

from moeops.api.v1alpha1.inferenceservice import EarlyExitSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.data.synthetic import greedy_generate
from moeops.model import Transformer
from moeops.model.transformer import Block
from moeops.serving.decoding.decode import DecodedToken, ExitStats, decode_step, generate
from moeops.serving.decoding.early_exit import NEVER_EXIT, ExitPolicy, confidence, softmax_max, top2_margin

ARCH = Architecture(layers=4, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=24, seq_len=48)
EOS = 2


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ARCH).to(torch.float64).eval()
    with torch.no_grad():  # distinct logits: exactness is about the cache, not about argmax ties
        model.head.weight.mul_(40.0)
    return model


def _prompt(seed: int, length: int) -> torch.Tensor:
    return torch.randint(4, ARCH.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


def test_confidence_rules_are_the_softmax_max_and_the_top2_margin() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    torch.testing.assert_close(softmax_max(logits), torch.tensor([0.5, 0.8]))
    torch.testing.assert_close(top2_margin(logits), torch.tensor([0.2, 0.7]))
    torch.testing.assert_close(confidence(logits, "top2-margin"), top2_margin(logits))
    with pytest.raises(ValueError, match="unknown early-exit rule"):
        confidence(logits, "entropy")  # type: ignore[arg-type]


def test_policy_from_the_spec_and_per_request_overrides() -> None:
    spec = EarlyExitSpec(enabled=True, rule="top2-margin", threshold=0.7, min_layer=2)
    policy = ExitPolicy.from_spec(spec)
    assert policy == ExitPolicy(enabled=True, rule="top2-margin", threshold=0.7, min_layer=2)
    assert policy.override(threshold=0.5) == ExitPolicy(enabled=True, rule="top2-margin", threshold=0.5, min_layer=2)
    assert policy.override(rule="softmax-max", min_layer=3).rule == "softmax-max"
    with pytest.raises(ValueError, match="threshold"):
        policy.override(threshold=1.5)
    assert ExitPolicy(threshold=1.0).never_exits and ExitPolicy.from_spec(EarlyExitSpec()).never_exits
    assert policy.may_exit_after(2, 4) and not policy.may_exit_after(1, 4) and not policy.may_exit_after(4, 4)


@pytest.mark.parametrize("rule", ["softmax-max", "top2-margin"])
def test_threshold_one_gives_exactly_the_full_models_tokens(rule: str) -> None:
    model = _model()
    policy = ExitPolicy(rule=rule, threshold=1.0)  # type: ignore[arg-type]
    for seed, length in ((0, 1), (2, 11)):
        prompt = _prompt(seed, length)
        decoded = list(generate(model, prompt, 12, policy))
        assert [d.token for d in decoded] == greedy_generate(model, prompt, 12).tolist()
        assert {d.exit_layer for d in decoded} == {ARCH.layers}


def test_threshold_zero_exits_every_token_at_min_layer() -> None:
    model = _model(1)
    prompt = _prompt(3, 6)
    for min_layer in (1, 3):
        decoded = list(generate(model, prompt, 10, ExitPolicy(threshold=0.0, min_layer=min_layer), eos=None))
        assert len(decoded) == 10
        assert {d.exit_layer for d in decoded} == {min_layer}
    # The first token comes from layer 1 of the last prompt position, whose prefix ran every layer: the full
    # forward's layer-1 state there.
    with torch.no_grad():
        hidden = model(prompt, return_hidden=True).hidden_states[0]
        first = int(model.exit_logits(hidden)[0, -1].argmax())
    assert next(generate(model, prompt, 1, ExitPolicy(threshold=0.0))).token == first


def test_skipped_layers_get_kv_entries_from_the_exiting_state() -> None:
    model = _model(2)
    prompt = _prompt(4, 5)[0].tolist()
    cache = model.new_kv_cache(batch=1, capacity=16)
    model.forward_cached(torch.tensor([prompt[:-1]]), cache)
    position = cache.length
    out = decode_step(model, prompt[-1], cache, ExitPolicy(threshold=0.0, min_layer=1))
    assert out.exit_layer == 1 and cache.length == position + 1
    with torch.no_grad():  # the exiting state: layer 1's output at this position
        check = model.new_kv_cache(batch=1, capacity=16)
        model.forward_cached(torch.tensor([prompt[:-1]]), check)
        hidden = model.forward_layer_cached(0, model.embedding(torch.tensor([[prompt[-1]]])), check, position)
        for layer in range(1, ARCH.layers):
            block = model.blocks[layer]
            assert isinstance(block, Block)
            k, v = block.attention.kv(block.attention_norm(hidden), model.rope_SF2, position)
            stored_k = cache.keys_LBHCd[layer, :, :, position : position + 1]
            stored_v = cache.values_LBHCd[layer, :, :, position : position + 1]
            assert stored_k.abs().sum() > 0 and stored_v.abs().sum() > 0
            torch.testing.assert_close(stored_k, k)
            torch.testing.assert_close(stored_v, v)


def test_generation_stops_after_eos_and_at_max_tokens() -> None:
    model = _model(3)
    tokens = [d.token for d in generate(model, [1, 5, 6], 8, NEVER_EXIT, eos=None)]
    assert len(tokens) == 8
    # Any id can be the stop token: the run ends right after its first occurrence, which it includes.
    stop = tokens[3]
    assert [d.token for d in generate(model, [1, 5, 6], 8, NEVER_EXIT, eos=stop)] == tokens[: tokens.index(stop) + 1]
    with pytest.raises(ValueError, match="context"):
        generate(model, [1] * 40, 10)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3)


def test_exit_stats_count_tokens_per_exit_layer() -> None:
    decoded = [DecodedToken(5, layer, 0.9) for layer in (1, 1, 2, 4)]
    stats = ExitStats.of(decoded, layers=4)
    assert stats.exit_layer_counts == (2, 1, 0, 1)
    assert stats.early_exits == 3
    assert math.isclose(stats.mean_exit_layer, 2.0) and math.isclose(stats.layers_saved, 0.5)
    with pytest.raises(ValueError, match="outside"):
        ExitStats.of([DecodedToken(5, 5, 0.9)], layers=4)
