"""Drift of a corpus from a trusted reference (pure): the population stability index (PSI) of two distributions,
document length and word use, between the filtered corpus and the reference the quality model was trained on.

PSI = sum_i (p_i - q_i) ln(p_i / q_i) over the bins of both histograms (each smoothed by EPSILON so an empty bin
costs a bounded amount). It is a symmetric KL divergence; the usual reading is < 0.1 stable, 0.1-0.25 a moderate
shift, > 0.25 a significant one (DRIFT_PSI). Words are hashed into TERM_BINS bins (crc32 of the lower-cased word):
no vocabulary to agree on between the reference and the corpus, and a fixed cost per document.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

TERM_BINS = 512
LENGTH_BINS = 16
"""log2 of a document's length in bytes, 1 B .. 32 KiB and above."""
EPSILON = 1e-4
DRIFT_PSI = 0.25
"""Above this on either distribution the corpus has drifted from the reference."""

_WORD = re.compile(r"\w+")


@dataclass
class Profile:
    """Histograms of a stream of documents (counts: profiles of shards add up)."""

    lengths: NDArray[np.float64] = field(default_factory=lambda: np.zeros(LENGTH_BINS))
    terms: NDArray[np.float64] = field(default_factory=lambda: np.zeros(TERM_BINS))
    documents: int = 0

    def add(self, text: str) -> None:
        self.documents += 1
        size = len(text.encode())
        self.lengths[min(LENGTH_BINS - 1, max(0, int(math.log2(size)) if size else 0))] += 1
        for word in _WORD.findall(text.lower()):
            self.terms[zlib.crc32(word.encode()) % TERM_BINS] += 1

    @classmethod
    def of(cls, texts: Iterable[str]) -> Profile:
        profile = cls()
        for text in texts:
            profile.add(text)
        return profile


def psi(expected: NDArray[np.float64], actual: NDArray[np.float64]) -> float:
    """The population stability index of two histograms of the same bins (counts or shares)."""
    if expected.shape != actual.shape:
        raise ValueError(f"histograms of {expected.shape} and {actual.shape} bins")
    if expected.sum() <= 0 or actual.sum() <= 0:
        raise ValueError("an empty histogram has no distribution")
    p = expected / expected.sum() + EPSILON
    q = actual / actual.sum() + EPSILON
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def drift(reference: Profile, candidate: Profile, threshold: float = DRIFT_PSI) -> dict[str, float | bool]:
    """PSI of lengths and of words between the reference and the candidate, and whether either exceeds
    `threshold`."""
    lengths = psi(reference.lengths, candidate.lengths)
    terms = psi(reference.terms, candidate.terms)
    return {
        "psi_lengths": round(lengths, 4),
        "psi_terms": round(terms, 4),
        "threshold": threshold,
        "drifted": max(lengths, terms) > threshold,
    }
