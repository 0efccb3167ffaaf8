"""Choosing a token from the logits the decoder made: greedy, or sampled with temperature, top-k and top-p from a
per-request generator (the same seed, the same tokens), and the log-probabilities the client asked for.

Before choosing, OpenAI's adjustments apply to the logits: `logit_bias` (added per token id), and the presence and
frequency penalties (subtracted for each token this choice has generated so far: once if it appeared, and per time
it appeared), as OpenAI documents them and vLLM applies them (to the generated tokens, not the prompt's).

Log-probabilities are those of the model's own distribution (log-softmax of the raw logits, before temperature,
top-k or top-p), as vLLM reports them by default: they say how sure the model was, whatever the sampling did.
The generator is a CPU one seeded per request, so a seed gives the same tokens whatever else is in the batch
(the logits of a batched pass may differ from a single one in the last bit; a draw on the edge between two tokens
can then flip, which is as reproducible as vLLM and OpenAI promise: "best effort").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_TOP_LOGPROBS = 20  # OpenAI's bound for chat (completions: 5)
MIN_TEMPERATURE = 1e-4
"""Below it a draw is the argmax (logits / 1e-300 overflow to inf, and a softmax of those is NaN)."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    """0: greedy (argmax), whatever top_k and top_p say."""
    top_p: float = 1.0
    top_k: int = 0
    """0: no top-k cut."""
    seed: int | None = None
    """None: a fresh random seed per request."""
    logprobs: int | None = None
    """None: none; 0: the chosen token's; k: also the k most likely tokens'."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits."""

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature ≥ 0, 0 < top_p ≤ 1 and top_k ≥ 0")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be in 0..{MAX_TOP_LOGPROBS}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def adjusts(self) -> bool:
        """Whether the logits change before the choice (a bias or a penalty)."""
        return bool(self.logit_bias) or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def needs_logits(self) -> bool:
        """Whether the decoder's argmax is not enough (a draw, an adjustment, or log-probabilities to report)."""
        return not self.greedy or self.logprobs is not None or self.adjusts


GREEDY = SamplingParams()


@dataclass(frozen=True)
class Choice:
    token: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


class Sampler:
    """One request's sampler: its own generator, so its draws depend on its seed alone."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(1 << 63)
        self.generator = torch.Generator(device="cpu").manual_seed(seed % (1 << 63))
        self.counts: dict[int, int] = {}
        """How often each token was chosen so far (the penalties' input)."""

    def choose(self, logits: Tensor, argmax: int) -> Choice:
        """The next token from `logits` (V,) whose argmax the decoder found to be `argmax`."""
        p = self.params
        logits = logits.detach().float().reshape(-1).cpu()
        adjusted = self._adjusted(logits) if p.adjusts else logits
        greedy = int(adjusted.argmax()) if p.adjusts else argmax  # the decoder's argmax, unless adjusted
        token = greedy if p.temperature < MIN_TEMPERATURE else self._draw(adjusted)
        self.counts[token] = self.counts.get(token, 0) + 1
        if p.logprobs is None:
            return Choice(token)
        logprobs = torch.log_softmax(logits, dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if p.logprobs:
            values, ids = logprobs.topk(min(p.logprobs, logprobs.numel()))
            top = tuple((int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True))
        return Choice(token, float(logprobs[token]), top)

    def _adjusted(self, logits: Tensor) -> Tensor:
        p, out = self.params, logits.clone()
        vocab = out.numel()
        for token, bias in p.logit_bias:
            if token < vocab:
                out[token] += bias
        if self.counts and (p.presence_penalty or p.frequency_penalty):
            ids = torch.tensor(list(self.counts))
            counts = torch.tensor(list(self.counts.values()), dtype=out.dtype)
            out[ids] -= p.presence_penalty + p.frequency_penalty * counts
        return out

    def _draw(self, logits: Tensor) -> int:
        p = self.params
        scaled = logits / p.temperature
        if p.top_k and p.top_k < scaled.numel():
            kth = scaled.topk(p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p: a token is kept when the mass before it is < top_p.
            before = sorted_probs.cumsum(0) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before >= p.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))
