"""Greedy decoding with a KV cache and adaptive early exit (CALM), one sequence at a time.

Per generated token: the input token runs through the layers one by one; after each layer l ≥ min_layer the
shared exit head (final norm + LM head) scores l's hidden state, and when the rule's confidence reaches the
threshold the token leaves with that head's argmax. The layers it skipped still need its keys and values,
or every later token would attend to a hole: as in CALM, they are computed from the exiting hidden state
(each skipped layer's attention norm and K/V projections on it, instead of the whole block, MoE included),
all skipped layers in one matmul (moeops.model.early_exit_kv). The prompt runs through every layer (a
prefill), except its last token, which is the first decoding step: so every generated token, the first
included, has an exit decision.

One sequence per call: tokens of one batch would exit at different layers, and a batched decoder then either
waits for the deepest (no saving) or regroups rows per layer; neither is here yet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from moeops.data.synthetic import CharTokenizer
from moeops.model import Transformer
from moeops.model.early_exit_kv import skipped_layers_kv
from moeops.model.kv_cache import KVCache
from moeops.serving.decoding.early_exit import NEVER_EXIT, ExitPolicy, confidence

EOS = CharTokenizer.EOS


@dataclass(frozen=True)
class DecodedToken:
    token: int
    exit_layer: int
    """1-based layer whose hidden state predicted the token; the model's depth when it ran every layer."""
    confidence: float
    """The rule's confidence at the exit layer (NaN where the policy never looks: it costs an exit head)."""
    logits: Tensor | None = field(default=None, compare=False, repr=False)
    """The exit head's logits (V,) that `token` is the argmax of: what a sampler draws from (the engine drops
    them before the token leaves its thread)."""
    logprob: float | None = None
    """The token's log-probability, when the request asked for log-probabilities (sampling.py)."""
    top_logprobs: tuple[tuple[int, float], ...] = ()
    """The most likely tokens and their log-probabilities, when asked for."""


@torch.no_grad()
def decode_step(model: Transformer, token: int, cache: KVCache, policy: ExitPolicy) -> DecodedToken:
    """Feed `token` at the cache's next position and predict the one after it, exiting early when the policy
    allows; fills the cache at that position in every layer (run or propagated) and advances it."""
    start, layers = cache.length, len(model.blocks)
    device = model.embedding.weight.device
    hidden = model.embedding(torch.tensor([[token]], device=device))
    for layer in range(1, layers + 1):
        hidden = model.forward_layer_cached(layer - 1, hidden, cache, start)
        if policy.may_exit_after(layer, layers):
            logits = model.exit_logits(hidden)[0, -1]
            score = float(confidence(logits, policy.rule))
            if score >= policy.threshold:
                skipped_layers_kv(model).fill(hidden, layer, cache, start)
                cache.advance(1)
                return DecodedToken(int(logits.argmax()), layer, score, logits)
    cache.advance(1)
    logits = model.exit_logits(hidden)[0, -1]
    score = float("nan") if policy.never_exits else float(confidence(logits, policy.rule))
    return DecodedToken(int(logits.argmax()), layers, score, logits)


def _prompt_list(prompt: Sequence[int] | Tensor) -> list[int]:
    ids = prompt.reshape(-1).tolist() if isinstance(prompt, Tensor) else list(prompt)
    if not ids:
        raise ValueError("the prompt must hold at least one token (BOS at least)")
    return [int(i) for i in ids]


def generate(
    model: Transformer,
    prompt: Sequence[int] | Tensor,
    max_tokens: int,
    policy: ExitPolicy = NEVER_EXIT,
    *,
    eos: int | None = EOS,
    cache: KVCache | None = None,
) -> Iterator[DecodedToken]:
    """Greedy tokens after `prompt` (ids; a (1, S) or (S,) tensor or a sequence), up to `max_tokens`, stopping
    after `eos` (None: never). `cache`: one to reuse or inspect (reset here); by default a new one sized to
    the request. Arguments are checked at the call, not at the first token. The model should be in eval mode
    (its MoE layers route the same either way)."""
    ids = _prompt_list(prompt)
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    needed = len(ids) + max_tokens - 1  # the last generated token is never fed back
    limit = model.arch.seq_len
    if needed > limit:
        raise ValueError(
            f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) need {needed} positions, more than the"
            f" model's context ({limit})"
        )
    if cache is None:
        cache = model.new_kv_cache(batch=1, capacity=needed)
    elif cache.batch != 1 or cache.capacity < needed:
        raise ValueError(f"the cache must hold one sequence of {needed} positions")
    return _decode(model, ids, max_tokens, policy, eos, cache)


@torch.no_grad()
def _decode(
    model: Transformer, ids: list[int], max_tokens: int, policy: ExitPolicy, eos: int | None, cache: KVCache
) -> Iterator[DecodedToken]:
    cache.reset()
    if len(ids) > 1:
        device = model.embedding.weight.device
        model.forward_cached(torch.tensor([ids[:-1]], device=device), cache)
    token = ids[-1]
    for _ in range(max_tokens):
        out = replace(decode_step(model, token, cache, policy), logits=None)  # a caller may keep every token
        yield out
        if out.token == eos:
            return
        token = out.token


@dataclass(frozen=True)
class ExitStats:
    """Where a run's tokens left the network."""

    tokens: int
    layers: int
    exit_layer_counts: tuple[int, ...]
    """Tokens that left at each layer: index l-1 for layer l."""

    @classmethod
    def of(cls, decoded: Sequence[DecodedToken], layers: int) -> ExitStats:
        counts = [0] * layers
        for d in decoded:
            if not 1 <= d.exit_layer <= layers:
                raise ValueError(f"exit layer {d.exit_layer} outside 1..{layers}")
            counts[d.exit_layer - 1] += 1
        return cls(len(decoded), layers, tuple(counts))

    @property
    def mean_exit_layer(self) -> float:
        total = sum(layer * n for layer, n in enumerate(self.exit_layer_counts, start=1))
        return total / self.tokens if self.tokens else float(self.layers)

    @property
    def layers_saved(self) -> float:
        """Fraction of the blocks' work not run (the K/V propagation and exit heads not counted)."""
        return 1.0 - self.mean_exit_layer / self.layers

    @property
    def early_exits(self) -> int:
        return self.tokens - self.exit_layer_counts[-1]
