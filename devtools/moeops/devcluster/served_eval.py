"""Exact match per synthetic domain, asked of a model server over its OpenAI-style API.

The same held-out examples as the trainer's own evaluation (`SyntheticCorpus.eval_examples`, from the job's seed),
but each answered by `POST /v1/completions` as a client would: what is measured is what is served, early exit and
batching included.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence

from moeops.data.synthetic import MAX_EXAMPLE_TOKENS, SyntheticCorpus


def complete(base_url: str, model: str, prompt: str, max_tokens: int, timeout_s: float = 60.0) -> str:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"{base_url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        return str(json.loads(answer.read())["choices"][0]["text"])


def served_exact_match(
    base_url: str, model: str, domains: Sequence[str], seed: int, count_per_domain: int
) -> dict[str, float]:
    corpus = SyntheticCorpus(domains, seed, max(MAX_EXAMPLE_TOKENS[d] for d in domains))
    scores: dict[str, float] = {}
    for domain in corpus.domains:
        examples = corpus.eval_examples(domain, count_per_domain)
        right = sum(
            complete(base_url, model, ex.prompt, len(corpus.tokenizer.encode(ex.answer)) + 1) == ex.answer
            for ex in examples
        )
        scores[domain] = right / len(examples)
    return scores
