"""The shingles of a batch of normalised documents: the distinct 32-bit hashes of their word n-grams, computed
for the whole batch in a few numpy passes and no Python call per word (per-word hashing in Python cost more
than everything else together).

Words: the batch is one byte string (documents joined by a space: normalised text has single spaces only).
A word's hash is the polynomial sum c_j P^(e-j) over its bytes (c = byte + 1, P odd, mod 2^64), read off prefix
sums of c_j Q^j (Q = P^-1 mod 2^64, which exists because P is odd) as (S[e] - S[s]) P^e, plus its length, mixed
by splitmix64's finaliser. N-grams: the polynomial of n consecutive word hashes, kept where the n words lie in
one document; a document shorter than n words is one shingle of all its words. Each shingle hash is mixed again
and cut to its top 32 bits (the permutations of moeops.datafilter.minhash take 32-bit inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]

POLY = 0x100000001B3  # FNV-64 prime: odd, so invertible mod 2^64
_POLY = np.uint64(POLY)
_POLY_INVERSE = np.uint64(pow(POLY, -1, 1 << 64))
_LENGTH = np.uint64(0x9E3779B97F4A7C15)
_SPACE = ord(" ") + 1


def mix(x: U64) -> U64:
    """splitmix64's finaliser: every input bit reaches every output bit (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _powers(base: np.uint64, count: int) -> U64:
    """base^0 .. base^(count-1) mod 2^64."""
    out = np.full(count, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


def word_hashes(data: bytes) -> tuple[U64, I64]:
    """64-bit hashes of the space-separated words of `data` (in order) and each word's end offset."""
    c = np.frombuffer(data, dtype=np.uint8).astype(np.uint64) + np.uint64(1)
    prefix = np.zeros(len(c) + 1, dtype=np.uint64)
    np.cumsum(c * _powers(_POLY_INVERSE, len(c)), out=prefix[1:])
    spaces = np.flatnonzero(c == _SPACE)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.concatenate((spaces, [len(c)]))
    powers = _powers(_POLY, len(c) + 1)
    lengths = (ends - starts).astype(np.uint64)
    return mix((prefix[ends] - prefix[starts]) * powers[ends] + lengths * _LENGTH), ends


def batch_shingles(documents: Sequence[str], shingle: int) -> tuple[U64, I64]:
    """(hashes, starts): the documents' distinct shingle hashes, document by document, and where each document's
    run starts. Every document has at least one shingle (an empty one hashes its one empty word)."""
    if shingle < 1:
        raise ValueError(f"shingle must be at least 1, got {shingle}")
    words = np.array([doc.count(" ") + 1 for doc in documents], dtype=np.int64)
    hashes, _ = word_hashes(" ".join(documents).encode("utf-8"))
    word_end = np.cumsum(words)
    grams = []
    owners = []
    if len(hashes) >= shingle:
        count = len(hashes) - shingle + 1
        gram = np.zeros(count, dtype=np.uint64)
        for offset in range(shingle):
            gram = gram * _POLY + hashes[offset : offset + count]
        owner = np.repeat(np.arange(len(documents)), words)[:count]
        inside = np.arange(count) + shingle <= word_end[owner]
        grams.append(gram[inside])
        owners.append(owner[inside])
    for doc in np.flatnonzero(words < shingle):  # too short for one full n-gram: one shingle of all its words
        gram = np.zeros(1, dtype=np.uint64)
        for word in hashes[word_end[doc] - words[doc] : word_end[doc]]:
            gram = gram * _POLY + word
        grams.append(gram)
        owners.append(np.array([doc]))
    shingles = mix(np.concatenate(grams)) >> np.uint64(32)
    owner_of = np.concatenate(owners)
    order = np.lexsort((shingles, owner_of))
    shingles, owner_of = shingles[order], owner_of[order]
    distinct = np.ones(len(shingles), dtype=bool)
    distinct[1:] = (shingles[1:] != shingles[:-1]) | (owner_of[1:] != owner_of[:-1])
    shingles, owner_of = shingles[distinct], owner_of[distinct]
    starts = np.searchsorted(owner_of, np.arange(len(documents)))
    return shingles, starts.astype(np.int64)
