"""Level 3, adversarial validation (pure): a classifier trained to tell candidate documents from the trusted
reference; the candidates it is surest are not reference-like are the ones to drop.

Features: words and word bigrams hashed into 2^FEATURE_BITS bins (crc32), log(1 + count), each row scaled to unit
length (so long documents weigh no more than short ones). Model: logistic regression, class-balanced, L2-penalised,
fitted by full-batch gradient descent in numpy (no scikit-learn in the runtime image). Its held-out AUC says how
separable the corpus is from the reference at all: 0.5 means the classifier cannot tell them apart, and then there
is nothing inauthentic to find.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

FEATURE_BITS = 12
FEATURES = 1 << FEATURE_BITS
_WORD = re.compile(r"\w+")

F32 = NDArray[np.float32]


def featurize(texts: Sequence[str]) -> F32:
    """(len(texts), FEATURES) float32: hashed word and bigram counts, log-scaled, unit rows."""
    rows = np.zeros((len(texts), FEATURES), dtype=np.float32)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        grams = [*words, *(f"{a} {b}" for a, b in pairwise(words))]
        if grams:
            slots = np.fromiter((zlib.crc32(g.encode()) & (FEATURES - 1) for g in grams), np.int64, len(grams))
            np.add.at(rows[row], slots, 1.0)
    np.log1p(rows, out=rows)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


@dataclass(frozen=True)
class Classifier:
    weights: F32
    bias: float

    def scores(self, features: F32) -> NDArray[np.float64]:
        """P(candidate, not reference) of each row."""
        return 1.0 / (1.0 + np.exp(-(features.astype(np.float64) @ self.weights.astype(np.float64) + self.bias)))

    @classmethod
    def train(
        cls, reference: F32, candidate: F32, *, l2: float = 1e-3, steps: int = 300, rate: float = 2.0
    ) -> Classifier:
        """Logistic regression of candidate (1) against reference (0); each class weighs half the loss."""
        if not len(reference) or not len(candidate):
            raise ValueError("adversarial validation needs reference and candidate documents")
        features = np.concatenate([reference, candidate])  # float32: 16 KiB a document
        labels = np.concatenate([np.zeros(len(reference)), np.ones(len(candidate))]).astype(np.float32)
        weight = np.where(labels == 1, 0.5 / len(candidate), 0.5 / len(reference)).astype(np.float32)
        w, b = np.zeros(FEATURES, dtype=np.float32), 0.0
        for _ in range(steps):
            residual = weight * (1.0 / (1.0 + np.exp(-(features @ w + b))) - labels)
            w -= np.float32(rate) * (features.T @ residual + np.float32(l2) * w)
            b -= rate * float(residual.sum())
        return cls(w, b)


def auc(positive: NDArray[np.float64], negative: NDArray[np.float64]) -> float:
    """Area under the ROC curve: the chance a positive scores above a negative (ties count half)."""
    if not len(positive) or not len(negative):
        raise ValueError("AUC needs scores of both classes")
    above = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(above / (len(positive) * len(negative)))


def fit_with_holdout(reference: F32, candidate: F32, drop: float, seed: int = 1) -> tuple[Classifier, float, float]:
    """(classifier on all rows, held-out AUC from a model fitted on 80%, score threshold). The threshold is the
    score above which the top `drop` share of the candidate rows lie (computed on the model fitted on all rows)."""
    if not 0.0 < drop < 1.0:
        raise ValueError(f"drop is a share of the candidates, 0 < drop < 1, got {drop}")
    rng = np.random.default_rng(seed)
    ref_test = rng.random(len(reference)) < 0.2
    cand_test = rng.random(len(candidate)) < 0.2
    held_out = 0.5
    if ref_test.any() and cand_test.any() and (~ref_test).any() and (~cand_test).any():
        model = Classifier.train(reference[~ref_test], candidate[~cand_test])
        held_out = auc(model.scores(candidate[cand_test]), model.scores(reference[ref_test]))
    model = Classifier.train(reference, candidate)
    threshold = float(np.quantile(model.scores(candidate), 1.0 - drop))
    return model, held_out, threshold
