"""Level 2 (pure): TF-IDF domains, a term co-occurrence graph per domain, and the domain mix re-weighted toward
target weights.

Domains are named by a seed word each (`domain_weights = {"python": 0.3, "recipe": 0.7}`): a domain's centroid
starts at its seed word's TF-IDF direction and spherical k-means (cosine, a few rounds) moves it to the documents
nearest it, so the names stay attached to the clusters they seeded and a spec can give target weights by name.
Words are hashed into 2^TERM_BITS bins (crc32): no vocabulary to build or ship between tasks.

Re-weighting only removes documents (the filter never invents text): with measured shares s_d and targets t_d,
domain d keeps the share keep_d = (t_d / s_d) / max_j (t_j / s_j) of its documents, so the most under-represented
domain keeps everything and the others are thinned toward the target mix. A document is kept when a hash of its
text falls below keep_d: the same document gets the same answer in any task.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
from numpy.typing import NDArray

TERM_BITS = 12
TERMS = 1 << TERM_BITS
_WORD = re.compile(r"[^\W\d_]{3,}")
"""Words of three letters or more: the graph is about topics, not 'a' and 'of'."""

F32 = NDArray[np.float32]


def _slot(word: str) -> int:
    return zlib.crc32(word.encode()) & (TERMS - 1)


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def term_counts(texts: Sequence[str]) -> F32:
    counts = np.zeros((len(texts), TERMS), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in words_of(text):
            counts[row, _slot(word)] += 1.0
    return counts


def inverse_document_frequency(counts: F32) -> F32:
    """Smoothed idf of each bin over the documents of `counts`."""
    df = (counts > 0).sum(axis=0)
    idf: F32 = (np.log((1.0 + len(counts)) / (1.0 + df)) + 1.0).astype(np.float32)
    return idf


def tfidf(counts: F32, idf: F32) -> F32:
    rows: F32 = (np.log1p(counts) * idf).astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


def seeded_centroids(seeds: Sequence[str], rows: F32, rounds: int = 10) -> F32:
    """Spherical k-means from one centroid per seed word (its bin): the domains keep their seeds' names."""
    centroids = np.zeros((len(seeds), TERMS), dtype=np.float32)
    for domain, seed in enumerate(seeds):
        centroids[domain, _slot(seed.lower())] = 1.0
    for _ in range(rounds):
        labels = assign(rows, centroids)
        for domain in range(len(seeds)):
            members = rows[labels == domain]
            if len(members):
                mean = members.sum(axis=0)
                centroids[domain] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return centroids


def assign(rows: F32, centroids: F32) -> NDArray[np.int64]:
    """Each row's nearest domain (cosine: rows and centroids have unit length)."""
    return np.asarray(np.argmax(rows @ centroids.T, axis=1), dtype=np.int64)


def keep_shares(shares: Sequence[float], targets: Sequence[float]) -> list[float]:
    """The share of each domain's documents to keep to move `shares` toward `targets` (see the module docstring).
    A domain with no documents keeps everything (there is nothing to thin)."""
    total = sum(targets)
    if total <= 0 or any(t < 0 for t in targets) or len(shares) != len(targets):
        raise ValueError("targets: one non-negative weight per domain, not all zero")
    ratios = [(t / total) / s if s > 0 else 0.0 for s, t in zip(shares, targets, strict=True)]
    top = max(ratios)
    if top <= 0:
        return [1.0] * len(shares)
    return [1.0 if s == 0 else r / top for s, r in zip(shares, ratios, strict=True)]


def kept_by_hash(text: str, keep: float) -> bool:
    return zlib.crc32(text.encode()) / 2**32 < keep


def cooccurrence_graph(texts: Sequence[str], top_terms: int = 12, edges: int = 15) -> dict[str, object]:
    """A domain's most frequent words and the pairs of them that appear in the same documents most often."""
    frequency: Counter[str] = Counter(word for text in texts for word in words_of(text))
    top = [word for word, _ in frequency.most_common(top_terms)]
    chosen = set(top)
    pairs: Counter[tuple[str, str]] = Counter()
    for text in texts:
        present = sorted(chosen.intersection(words_of(text)))
        pairs.update(combinations(present, 2))
    return {"terms": top, "edges": [[a, b, n] for (a, b), n in pairs.most_common(edges)]}


def domain_summary(
    names: Sequence[str], labels: NDArray[np.int64], texts: Sequence[str], targets: Mapping[str, float]
) -> dict[str, dict[str, object]]:
    """Per domain: its share of the sample, target, keep share and co-occurrence graph."""
    shares = [float((labels == d).mean()) if len(labels) else 0.0 for d in range(len(names))]
    keep = keep_shares(shares, [targets[name] for name in names])
    return {
        name: {
            "sample_share": round(shares[d], 4),
            "target": targets[name],
            "keep": round(keep[d], 4),
            "graph": cooccurrence_graph([t for t, label in zip(texts, labels, strict=True) if label == d]),
        }
        for d, name in enumerate(names)
    }
