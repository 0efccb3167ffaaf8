"""Level 3, adversarial validation: a classifier of candidate against reference (moeops.datafilter.adversarial),
as the filter's `adversarial` stage: the documents least like the reference are dropped, with examples."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from datafilter_corpus import PROSE, run_all_stages
from moeops.datafilter.adversarial import auc, featurize, fit_with_holdout
from moeops.datafilter.config import plan
from moeops.datafilter.pipeline import summary

SPAM = "buy cheap pills now click here free offer winner casino bonus".split()  # noqa: SIM905


def _docs(rng: random.Random, words: list[str], count: int) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(40)) for _ in range(count)]


def test_the_classifier_finds_what_is_unlike_the_reference_and_cannot_split_alike_text() -> None:
    rng = random.Random(4)
    reference = featurize(_docs(rng, PROSE, 200))
    candidate = featurize(_docs(rng, PROSE, 180) + _docs(rng, SPAM, 20))
    model, _, threshold = fit_with_holdout(reference, candidate, drop=0.1)
    scores = model.scores(candidate)
    assert (scores[180:] > threshold).sum() == 20 and (scores[:180] > threshold).sum() == 0
    _, alike, _ = fit_with_holdout(reference, featurize(_docs(rng, PROSE, 200)), drop=0.1)
    assert alike < 0.7, "held-out AUC of text like the reference: near chance"
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.8])) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="0 < drop < 1"):
        fit_with_holdout(reference, candidate, drop=1.0)


def test_the_adversarial_stage_drops_the_unlike_documents_with_examples(tmp_path: Path) -> None:
    rng = random.Random(6)
    texts = _docs(rng, PROSE, 45) + _docs(rng, SPAM, 5)
    rng.shuffle(texts)
    corpus, reference = tmp_path / "corpus.jsonl", tmp_path / "reference.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    reference.write_text("".join(json.dumps({"text": t}) + "\n" for t in _docs(rng, PROSE, 60)))
    config = plan([str(corpus)], [corpus.stat().st_size], 2, str(tmp_path / "out"), reference=[str(reference)],
                  max_perplexity=1e9, adversarial_drop=0.1)  # fmt: skip
    report = run_all_stages(config, tmp_path / "work")
    level3 = report["level3"]
    assert level3["removed"] == 5 and report["kept"] == 45
    assert all(set(e["text"].split()) <= set(SPAM) for e in level3["examples"]) and level3["examples"]
    kept = [json.loads(line)["text"] for shard in report["shards"] for line in Path(shard).read_text().splitlines()]
    assert not any(set(text.split()) <= set(SPAM) for text in kept)
    assert summary(report)["level3"] == {"adversarial": 5}
