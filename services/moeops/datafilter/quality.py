"""Level 1's quality score: perplexity under a byte n-gram language model trained on a trusted reference.

The model counts byte n-grams and their (n-1)-byte contexts in two hashed tables of TABLE_SIZE counters (a
collision adds a little mass, never crashes: the tables are a fixed 8 MiB whatever the reference), and scores
p(byte | context) = (count(n-gram) + k) / (count(context) + 256 k). A document's perplexity is exp of the mean
negative log probability of its bytes: text like the reference scores low, garbage (random characters, markup,
machine noise in another alphabet) high. Everything is numpy over the whole text: n passes for the hashes, one
gather for the counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .shingles import POLY, mix

TABLE_BITS = 20
TABLE_SIZE = 1 << TABLE_BITS
_POLY = np.uint64(POLY)
_CONTEXT_SALT = np.uint64(0x5851F42D4C957F2D)


def _gram_slots(data: NDArray[np.uint8], order: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Table slots of each n-gram ending at byte i >= order - 1 of `data`, and of its context."""
    count = len(data) - order + 1
    if count <= 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    values = data.astype(np.uint64) + np.uint64(1)
    context = np.zeros(count, dtype=np.uint64)
    for offset in range(order - 1):
        context = context * _POLY + values[offset : offset + count]
    gram = context * _POLY + values[order - 1 : order - 1 + count]
    shift = np.uint64(64 - TABLE_BITS)
    return (mix(gram) >> shift).astype(np.int64), (mix(context ^ _CONTEXT_SALT) >> shift).astype(np.int64)


@dataclass
class ByteNgramModel:
    order: int
    grams: NDArray[np.uint32]
    contexts: NDArray[np.uint32]
    smoothing: float = 0.1

    @classmethod
    def train(cls, texts: Iterable[str], order: int = 4, smoothing: float = 0.1) -> ByteNgramModel:
        if order < 2:
            raise ValueError(f"order must be at least 2, got {order}")
        grams = np.zeros(TABLE_SIZE, dtype=np.uint32)
        contexts = np.zeros(TABLE_SIZE, dtype=np.uint32)
        for text in texts:
            gram_slots, context_slots = _gram_slots(_bytes(text), order)
            grams += np.bincount(gram_slots, minlength=TABLE_SIZE).astype(np.uint32)
            contexts += np.bincount(context_slots, minlength=TABLE_SIZE).astype(np.uint32)
        if not grams.any():
            raise ValueError(f"the reference has no text of {order} bytes or more")
        return cls(order, grams, contexts, smoothing)

    def perplexity(self, text: str) -> float:
        """exp(mean -log p(byte | the order-1 bytes before it)); a text shorter than the order scores 1.0."""
        gram_slots, context_slots = _gram_slots(_bytes(text), self.order)
        if not len(gram_slots):
            return 1.0
        numerator = self.grams[gram_slots] + self.smoothing
        denominator = self.contexts[context_slots] + 256 * self.smoothing
        return float(np.exp(-np.mean(np.log(numerator / denominator))))


def _bytes(text: str) -> NDArray[np.uint8]:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
