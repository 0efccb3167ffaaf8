"""MinHash signatures over word n-grams ("shingles") and their LSH band keys, vectorised with numpy.

Shingles come from moeops.datafilter.shingles (32-bit hashes of word n-grams, a batch at a time). Permutation j
maps a 32-bit shingle hash h to
((a_j * h + b_j) mod 2^64) >> 32 with random 64-bit a_j, b_j: Dietzfelbinger's multiply-add-shift family, which
is 2-independent like datasketch's (a h + b) mod (2^61 - 1), and costs a multiply, an add and a shift where the
prime costs an integer division (the slowest numpy operation here, by far). A batch of documents is signed at
once: (shingles x permutations) matrices of bounded size, computed in place, and a minimum per document
(np.minimum.reduceat).

Bands: the signature is cut into `bands` rows of `rows` values; two documents are candidates when all values
of some band agree, i.e. with probability 1 - (1 - s^rows)^bands at Jaccard similarity s. A band's values are
folded into one 64-bit key, so a bucket is a run of equal keys after a sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .shingles import I64, POLY, batch_shingles, mix

_SHIFT_32 = np.uint64(32)
_POLY = np.uint64(POLY)  # the base of the band fold
_MAX_CELLS = 1 << 18
"""Shingles x permutations per matrix: bounds the memory of one batch (2 MiB) whatever the documents' length,
and keeps it in cache."""

U64 = NDArray[np.uint64]


@dataclass(frozen=True)
class MinHashParams:
    shingle: int = 5
    """Words per shingle; a document shorter than this is one shingle of all its words."""
    bands: int = 14
    rows: int = 8
    seed: int = 1

    def __post_init__(self) -> None:
        if self.shingle < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError(f"shingle, bands and rows must be at least 1: {self}")

    @property
    def permutations(self) -> int:
        return self.bands * self.rows

    def threshold(self) -> float:
        """The Jaccard similarity at which a pair becomes a candidate with probability about 1/2."""
        return float((1.0 / self.bands) ** (1.0 / self.rows))


def permutation_coefficients(params: MinHashParams) -> tuple[U64, U64]:
    rng = np.random.default_rng(params.seed)
    a = rng.integers(0, 1 << 64, params.permutations, dtype=np.uint64, endpoint=False) | np.uint64(1)  # odd
    b = rng.integers(0, 1 << 64, params.permutations, dtype=np.uint64, endpoint=False)
    return a, b


def _permuted(hashes: U64, a: U64, b: U64) -> U64:
    """(shingles, permutations) ((a h + b) mod 2^64) >> 32, with no temporary matrix beyond the result."""
    out = np.multiply(hashes[:, None], a[None, :])  # wraps mod 2^64, as the family wants
    np.add(out, b[None, :], out=out)
    np.right_shift(out, _SHIFT_32, out=out)
    return out


def shingle_hashes(normalised: str, shingle: int) -> U64:
    """One document's distinct shingle hashes (moeops.datafilter.shingles does a batch)."""
    return batch_shingles([normalised], shingle)[0]


def signatures(hashes: U64, starts: I64, a: U64, b: U64) -> U64:
    """(documents, permutations) MinHash values: document d's shingle hashes are hashes[starts[d]:starts[d+1]]
    (each run non-empty), as batch_shingles returns them."""
    ends = np.append(starts[1:], len(hashes))
    out = np.empty((len(starts), len(a)), dtype=np.uint64)
    per_matrix = max(1, _MAX_CELLS // len(a))  # shingles per matrix
    first = 0
    while first < len(starts):
        # The most whole documents whose shingles fit in one matrix (at least one).
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + per_matrix, side="right")))
        if last == first + 1 and ends[first] - starts[first] > per_matrix:
            out[first] = _long_signature(hashes[starts[first] : ends[first]], a, b)
        else:
            chunk = hashes[starts[first] : ends[last - 1]]
            out[first:last] = np.minimum.reduceat(_permuted(chunk, a, b), starts[first:last] - starts[first], axis=0)
        first = last
    return out


def signatures_of(shingle_sets: Sequence[U64], a: U64, b: U64) -> U64:
    """signatures() of documents given one array each."""
    starts = np.cumsum([0] + [len(s) for s in shingle_sets[:-1]]).astype(np.int64)
    return signatures(np.concatenate(shingle_sets), starts, a, b)


def _long_signature(hashes: U64, a: U64, b: U64) -> U64:
    step = max(1, _MAX_CELLS // len(a))
    low = np.full(len(a), 0xFFFFFFFF, dtype=np.uint64)
    for start in range(0, len(hashes), step):
        low = np.minimum(low, _permuted(hashes[start : start + step], a, b).min(axis=0))
    return low


def band_keys(signature: U64, params: MinHashParams) -> U64:
    """(documents, bands) 64-bit keys: band k's `rows` values folded into one number."""
    if signature.shape[1] != params.permutations:
        raise ValueError(f"signatures have {signature.shape[1]} values, the params {params.permutations}")
    band_rows = signature.reshape(len(signature), params.bands, params.rows)
    keys = np.zeros(band_rows.shape[:2], dtype=np.uint64)
    for row in range(params.rows):
        keys = keys * _POLY + band_rows[:, :, row]
    return mix(keys)
