"""Candidate pairs from one band (or from the exact hashes): documents whose keys are equal.

Doc ids are 64-bit: (task << 32) | ordinal, so the smallest id of a group is the first in reading order (task i
reads the i-th byte range of the corpus). A bucket of k documents gives k - 1 pairs (first, other): a star
joins them as well as all k(k-1)/2 pairs would, and a hot bucket costs linear, not quadratic, output.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

U64 = NDArray[np.uint64]
ORDINAL_BITS = 32
MAX_ORDINAL = (1 << ORDINAL_BITS) - 1


def doc_id(task: int, ordinal: int) -> int:
    if not 0 <= ordinal <= MAX_ORDINAL:
        raise ValueError(f"a task holds at most {MAX_ORDINAL + 1} documents, got ordinal {ordinal}")
    return (task << ORDINAL_BITS) | ordinal


def doc_ids(task: int, count: int) -> U64:
    if count > MAX_ORDINAL + 1:
        raise ValueError(f"a task holds at most {MAX_ORDINAL + 1} documents, got {count}")
    return (np.uint64(task) << np.uint64(ORDINAL_BITS)) | np.arange(count, dtype=np.uint64)


def split_id(doc: int) -> tuple[int, int]:
    """(task, ordinal) of a doc id."""
    return doc >> ORDINAL_BITS, doc & MAX_ORDINAL


def sort_keys(keys: U64, docs: U64) -> tuple[U64, U64]:
    """Keys and docs ordered by (key, doc): what a signatures task writes, and what bucket_pairs reads."""
    order = np.lexsort((docs, keys))
    return keys[order], docs[order]


def bucket_pairs(keys: U64, docs: U64) -> NDArray[np.uint64]:
    """(pairs, 2) [first doc of the bucket, another doc of it] for every bucket of equal keys; inputs in any order."""
    keys, docs = sort_keys(keys, docs)
    if len(keys) == 0:
        return np.empty((0, 2), dtype=np.uint64)
    starts = np.empty(len(keys), dtype=bool)
    starts[0] = True
    np.not_equal(keys[1:], keys[:-1], out=starts[1:])
    bucket = np.cumsum(starts) - 1
    first = docs[starts][bucket]
    others = ~starts
    return np.stack([first[others], docs[others]], axis=1)
