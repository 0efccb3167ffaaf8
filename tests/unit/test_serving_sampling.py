"""Choosing tokens from logits (serving/decoding/sampling.py): greedy, top-k and top-p cuts, temperature, a seed that
reproduces the draws, the adjustments (logit bias, presence and frequency penalties) and log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from moeops.serving.decoding.sampling import Sampler, SamplingParams

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])


def draws(params: SamplingParams, n: int = 200) -> list[int]:
    sampler = Sampler(params)
    return [sampler.choose(LOGITS, 0).token for _ in range(n)]


def test_greedy_takes_the_decoders_argmax() -> None:
    assert Sampler(SamplingParams()).choose(LOGITS, 0).token == 0


def test_a_seed_reproduces_the_draws_and_another_does_not() -> None:
    params = SamplingParams(temperature=1.0, seed=11)
    assert draws(params) == draws(params)
    assert draws(params) != draws(SamplingParams(temperature=1.0, seed=12))
    assert len(set(draws(params))) == 5  # temperature 1 over these logits reaches every token


def test_top_k_and_top_p_cut_the_tail() -> None:
    assert set(draws(SamplingParams(temperature=1.0, top_k=2, seed=1))) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_k=1, seed=1))) == {0}
    # probabilities ≈ .55 .20 .12 .07 .03: top_p 0.6 keeps the first two (the mass before the 2nd is .55 < .6)
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.6, seed=1))) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.01, seed=1))) == {0}


def test_low_temperature_is_nearly_greedy() -> None:
    assert set(draws(SamplingParams(temperature=0.05, seed=3))) == {0}


def test_logit_bias_and_penalties() -> None:
    assert Sampler(SamplingParams(logit_bias=((4, 10.0),))).choose(LOGITS, 0).token == 4
    sampler = Sampler(SamplingParams(frequency_penalty=0.6))
    # 0 leads by 1.0; each time it is chosen it loses 0.6: chosen twice, then 1 (1.0 > 2.0 - 1.2)
    assert [sampler.choose(LOGITS, 0).token for _ in range(3)] == [0, 0, 1]
    sampler = Sampler(SamplingParams(presence_penalty=2.0))  # after 0 and 1: 0.0, -1.0, 0.5 → 2
    assert [sampler.choose(LOGITS, 0).token for _ in range(3)] == [0, 1, 2]


def test_logprobs_of_the_model_distribution() -> None:
    choice = Sampler(SamplingParams(logprobs=2)).choose(LOGITS, 0)
    expected = torch.log_softmax(LOGITS, dim=-1)
    assert choice.logprob == pytest.approx(float(expected[0]))
    assert [t for t, _ in choice.top_logprobs] == [0, 1]
    assert math.exp(choice.top_logprobs[1][1]) == pytest.approx(float(expected[1].exp()))
    assert Sampler(SamplingParams(logprobs=0)).choose(LOGITS, 0).top_logprobs == ()


def test_parameters_out_of_range_are_refused() -> None:
    for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1}, {"logprobs": 21}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
