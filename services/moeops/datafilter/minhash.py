"""MinHash signatures over word n-grams ("shingles") and their LSH band keys, vectorised with numpy.

A document's shingles are hashed without a Python call per shingle: each word is hashed once (two CRC-32s make
64 bits), and the hash of the n-gram starting at word k is a polynomial of the n word hashes (uint64, wrapping),
mixed by splitmix64's finaliser and cut to 32 bits. Permutation j maps a 32-bit shingle hash h to
(a_j * h + b_j) mod (2^61 - 1), truncated to 32 bits, with a_j, b_j < 2^32 so the product never overflows
(datasketch draws a_j up to 2^61 and lets it wrap). A batch of documents is signed at once: one (shingles x
permutations) matrix and a minimum per document (np.minimum.reduceat).

Bands: the signature is cut into `bands` rows of `rows` values; two documents are candidates when all values
of some band agree, i.e. with probability 1 - (1 - s^rows)^bands at Jaccard similarity s. A band's values are
folded into one 64-bit key, so a bucket is a run of equal keys after a sort.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

MERSENNE_61 = np.uint64((1 << 61) - 1)
MASK_32 = np.uint64(0xFFFFFFFF)
_POLY = np.uint64(0x100000001B3)  # FNV-64 prime: the base of the n-gram polynomial and of the band fold
_SECOND_SEED = 0x9E3779B9
_MAX_CELLS = 1 << 22
"""Shingles x permutations per matrix: bounds the memory of one batch (32 MiB) whatever the documents' length."""

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


def _mix(x: U64) -> U64:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permutation_coefficients(params: MinHashParams) -> tuple[U64, U64]:
    rng = np.random.default_rng(params.seed)
    a = rng.integers(1, 1 << 32, params.permutations, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, params.permutations, dtype=np.uint64)
    return a, b


def shingle_hashes(normalised: str, shingle: int) -> U64:
    """The distinct 32-bit hashes (in uint64) of the document's word n-grams; never empty."""
    words = normalised.split(" ")
    encoded = [word.encode("utf-8") for word in words]
    low = np.fromiter((zlib.crc32(w) for w in encoded), dtype=np.uint64, count=len(encoded))
    high = np.fromiter((zlib.crc32(w, _SECOND_SEED) for w in encoded), dtype=np.uint64, count=len(encoded))
    word = (high << np.uint64(32)) | low
    width = min(shingle, len(word))
    count = len(word) - width + 1
    grams = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(width):
            grams = grams * _POLY + word[offset : offset + count]
    return np.unique(_mix(grams) >> np.uint64(32))


def signatures(shingle_sets: Sequence[U64], a: U64, b: U64) -> U64:
    """(documents, permutations) MinHash values of these documents' shingle hashes (each non-empty)."""
    out = np.empty((len(shingle_sets), len(a)), dtype=np.uint64)
    first = 0
    while first < len(shingle_sets):
        last, cells = first, 0
        while last < len(shingle_sets) and (last == first or cells + len(shingle_sets[last]) * len(a) <= _MAX_CELLS):
            cells += len(shingle_sets[last]) * len(a)
            last += 1
        batch = shingle_sets[first:last]
        if len(batch) == 1 and len(batch[0]) * len(a) > _MAX_CELLS:
            out[first] = _long_signature(batch[0], a, b)
        else:
            hashes = np.concatenate(batch)
            starts = np.cumsum([0] + [len(s) for s in batch[:-1]])
            permuted = ((hashes[:, None] * a[None, :] + b[None, :]) % MERSENNE_61) & MASK_32
            out[first:last] = np.minimum.reduceat(permuted, starts, axis=0)
        first = last
    return out


def _long_signature(hashes: U64, a: U64, b: U64) -> U64:
    step = max(1, _MAX_CELLS // len(a))
    low = np.full(len(a), MASK_32, dtype=np.uint64)
    for start in range(0, len(hashes), step):
        chunk = hashes[start : start + step]
        low = np.minimum(low, (((chunk[:, None] * a[None, :] + b[None, :]) % MERSENNE_61) & MASK_32).min(axis=0))
    return low


def band_keys(signature: U64, params: MinHashParams) -> U64:
    """(documents, bands) 64-bit keys: band k's `rows` values folded into one number."""
    if signature.shape[1] != params.permutations:
        raise ValueError(f"signatures have {signature.shape[1]} values, the params {params.permutations}")
    band_rows = signature.reshape(len(signature), params.bands, params.rows)
    keys = np.zeros(band_rows.shape[:2], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for row in range(params.rows):
            keys = keys * _POLY + band_rows[:, :, row]
    return _mix(keys)
