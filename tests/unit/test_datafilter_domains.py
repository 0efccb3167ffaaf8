"""Level 2: TF-IDF domains named by seed words, a co-occurrence graph per domain, and the mix re-weighted toward
target weights (moeops.datafilter.domains), as the filter's `domains` stage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from datafilter_corpus import run_all_stages
from moeops.datafilter.config import plan
from moeops.datafilter.domains import (
    assign,
    inverse_document_frequency,
    keep_shares,
    seeded_centroids,
    term_counts,
    tfidf,
)
from moeops.datafilter.pipeline import main

CODE = ["python", "function", "return", "variable", "compile", "loop", "class", "import", "debug", "module"]
FOOD = ["recipe", "flour", "sugar", "butter", "oven", "bake", "salt", "onion", "garlic", "simmer"]


def _docs(rng: random.Random, words: list[str], count: int) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(30)) for _ in range(count)]


def test_seeded_domains_keep_their_names_and_the_mix_moves_toward_the_targets() -> None:
    rng = random.Random(8)
    texts = _docs(rng, CODE, 60) + _docs(rng, FOOD, 20)
    rows = tfidf(term_counts(texts), inverse_document_frequency(term_counts(texts)))
    labels = assign(rows, seeded_centroids(["recipe", "python"], rows))
    assert (labels[:60] == 1).all() and (labels[60:] == 0).all()
    assert keep_shares([0.75, 0.25], [0.5, 0.5]) == pytest.approx([1 / 3, 1.0])
    assert keep_shares([0.5, 0.0], [0.5, 0.5]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="one non-negative weight per domain"):
        keep_shares([0.5, 0.5], [0.0, 0.0])


def test_the_domains_stage_rebalances_the_corpus_and_reports_each_domains_graph(tmp_path: Path) -> None:
    rng = random.Random(9)
    texts = _docs(rng, CODE, 150) + _docs(rng, FOOD, 50)
    rng.shuffle(texts)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = plan([str(corpus)], [corpus.stat().st_size], 2, str(tmp_path / "out"),
                  domain_weights={"python": 0.5, "recipe": 0.5})  # fmt: skip
    report = run_all_stages(config, tmp_path / "work")
    level2 = report["level2"]
    assert level2["domains"]["python"]["sample_share"] == pytest.approx(0.75)
    assert level2["domains"]["recipe"]["keep"] == 1.0 and level2["domains"]["python"]["keep"] == pytest.approx(
        1 / 3, abs=1e-3
    )
    shares = level2["kept_share"]
    assert abs(shares["python"] - 0.5) < 0.1 and report["kept"] == 200 - level2["removed"]
    graph = level2["domains"]["recipe"]["graph"]
    assert set(graph["terms"]) <= set(FOOD) and graph["edges"] and all(n > 0 for _, _, n in graph["edges"])


def test_the_pipeline_takes_the_domain_weights_as_a_pod_is_given_them(tmp_path: Path) -> None:
    rng = random.Random(10)
    (tmp_path / "in").mkdir()
    texts = _docs(rng, CODE, 30) + _docs(rng, FOOD, 10)
    (tmp_path / "in" / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    weights = ["--domain-weight", "python=1", "--domain-weight", "recipe=1"]
    args = [str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "work"), "--tasks", "1", "--task", "0",
            *weights, "--summary", str(tmp_path / "summary")]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["level2"]["domains"]) == {"python", "recipe"}
    assert json.loads((tmp_path / "summary").read_text())["level2"] == {"rebalance": report["level2"]["removed"]}
