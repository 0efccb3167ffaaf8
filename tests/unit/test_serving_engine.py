"""The engine without HTTP: batched decoding rows are generate()'s tokens, mixed early-exit policies in one round,
the batch bound, the latency window, and the load counters."""

from __future__ import annotations

import asyncio

import pytest
import torch

from moeops.api.v1alpha1.presets import Architecture
from moeops.model import Transformer
from moeops.serving.decoding.batched import decode_rows
from moeops.serving.decoding.decode import DecodedToken, generate
from moeops.serving.decoding.early_exit import NEVER_EXIT, ExitPolicy
from moeops.serving.decoding.engine import Engine, Failed, Finished, GenerationRequest

ARCH = Architecture(layers=3, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=24, seq_len=48)
PROMPTS = [[1, 5, 6, 7, 3], [1, 9, 3], [1, 10, 11, 12, 13, 14, 15, 16, 3], [7], [1, 4, 4, 4, 4, 3]]


def _model(dtype: torch.dtype = torch.float32) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ARCH).to(dtype).eval()
    with torch.no_grad():
        model.head.weight.mul_(40.0)
    return model


def _tokens(model: Transformer, prompt: list[int], n: int, policy: ExitPolicy = NEVER_EXIT) -> list[int]:
    return [t.token for t in generate(model, prompt, n, policy, eos=None)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_rows_gives_each_row_what_generate_gives(dtype: torch.dtype) -> None:
    model, steps = _model(dtype), 12
    caches = []
    for prompt in PROMPTS:
        cache = model.new_kv_cache(batch=1, capacity=len(prompt) + steps)
        if len(prompt) > 1:
            model.forward_cached(torch.tensor([prompt[:-1]]), cache)
        caches.append(cache)
    tokens = [p[-1] for p in PROMPTS]
    rows: list[list[int]] = [[] for _ in PROMPTS]
    for _ in range(steps):
        out = decode_rows(model, tokens, caches)
        assert all(o.exit_layer == ARCH.layers for o in out)
        tokens = [o.token for o in out]
        for row, t in zip(rows, tokens, strict=True):
            row.append(t)
    assert rows == [_tokens(model, p, steps) for p in PROMPTS]
    assert [c.length for c in caches] == [len(p) - 1 + steps for p in PROMPTS]


async def _collect(engine: Engine, request: GenerationRequest) -> tuple[list[DecodedToken], str]:
    tokens: list[DecodedToken] = []
    async for event in engine.submit(request).events():
        if isinstance(event, DecodedToken):
            tokens.append(event)
        elif isinstance(event, Finished):
            return tokens, event.reason
        else:
            assert not isinstance(event, Failed), event.message
    raise AssertionError("no end")


def _run(engine: Engine, requests: list[GenerationRequest]) -> list[tuple[list[DecodedToken], str]]:
    async def main() -> list[tuple[list[DecodedToken], str]]:
        return list(await asyncio.gather(*(_collect(engine, r) for r in requests)))

    engine.start()
    try:
        return asyncio.run(main())
    finally:
        engine.stop()


@pytest.mark.parametrize("batched_matmuls", [True, False])
def test_mixed_policies_in_one_batch_are_each_exact(batched_matmuls: bool) -> None:
    model = _model()
    policies = [NEVER_EXIT, ExitPolicy(threshold=0.0, min_layer=2), NEVER_EXIT, ExitPolicy(threshold=1.0),
                ExitPolicy(threshold=0.5, rule="top2-margin")]  # fmt: skip
    requests = [GenerationRequest(p, 10, pol, eos=2) for p, pol in zip(PROMPTS, policies, strict=True)]
    engine = Engine(model, max_batch_size=8, max_latency_ms=200, batched_matmuls=batched_matmuls)
    results = _run(engine, requests)
    for (tokens, reason), request in zip(results, requests, strict=True):
        want = list(generate(model, request.prompt, 10, request.policy, eos=2))
        assert [(t.token, t.exit_layer) for t in tokens] == [(t.token, t.exit_layer) for t in want]
        assert reason == ("stop" if want[-1].token == 2 else "length")
    stats = engine.stats()
    assert stats.max_round_size == len(requests) and stats.requests_completed == len(requests)
    assert stats.tokens_generated == sum(len(t) for t, _ in results)
    exits = [t.exit_layer for tokens, _ in results for t in tokens]
    assert stats.mean_exit_layer == pytest.approx(sum(exits) / len(exits))
    assert stats.in_flight == 0 and stats.queued == 0 and stats.tokens_per_second > 0


def test_the_batch_never_exceeds_max_batch_size() -> None:
    engine = Engine(_model(), max_batch_size=2, max_latency_ms=200)
    results = _run(engine, [GenerationRequest(p, 6, NEVER_EXIT, eos=None) for p in PROMPTS])
    assert all(len(tokens) == 6 and reason == "length" for tokens, reason in results)
    stats = engine.stats()
    assert stats.max_round_size == 2 and stats.batched_rounds > 0 and stats.rounds >= 6 * len(PROMPTS) / 2


def test_without_a_latency_window_a_lone_request_starts_at_once() -> None:
    engine = Engine(_model(), max_batch_size=8, max_latency_ms=0)
    ((tokens, reason),) = _run(engine, [GenerationRequest(PROMPTS[0], 4, NEVER_EXIT, eos=None)])
    assert len(tokens) == 4 and reason == "length" and engine.stats().max_round_size == 1


def test_a_stopped_engine_refuses_and_bad_settings_are_errors() -> None:
    engine = Engine(_model(), max_batch_size=1, max_latency_ms=1)

    async def submit() -> None:
        engine.submit(GenerationRequest([1], 1, NEVER_EXIT, eos=None))

    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(submit())
    with pytest.raises(ValueError, match="max_batch_size"):
        Engine(_model(), max_batch_size=0, max_latency_ms=1)
