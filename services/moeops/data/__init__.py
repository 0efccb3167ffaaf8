"""Training data for the runtime: the built-in synthetic corpus (`synthetic://<domains>`) and text corpora
(`file://` and `pvc://` sources in the `text` or `jsonl` format) with a byte-level BPE tokenizer.

The synthetic corpus exists to make expert specialisation measurable on one machine: six character-level
domains with different rules, each scored by exact match. The text corpus trains on your own documents: it
tokenizes them with a tokenizer loaded from a `tokenizer.json` or trained offline on the corpus itself, packs
them into one stream (streamed into a memory-mapped token file, not held in memory) and serves shuffled windows
of it, a fresh order each epoch. Both serve batches that are
a pure function of (seed, step, row) for a given global batch size, so that resuming or changing the world
size never changes what the model sees.

Importing the package costs no torch: the tokenizer and the document reader (bpe, documents) load eagerly, the
corpora (synthetic, text: torch tensors) on first use of one of their names, so a tool that only reads or
tokenizes documents starts without torch's ~1 s import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .bpe import EOD_TOKEN, PAD_TOKEN, BpeTokenizer, check_vocab, train_bpe
from .documents import Documents, DocumentStats, iter_documents, read_documents, read_files

if TYPE_CHECKING:
    from .synthetic import (
        DOMAINS,
        CharTokenizer,
        Example,
        SyntheticCorpus,
        exact_match,
        greedy_generate,
        make_example,
        parse_source,
    )
    from .text import TextCorpus, load_text_corpus, train_tokenizer

_LAZY = {
    **dict.fromkeys(
        (
            "DOMAINS",
            "CharTokenizer",
            "Example",
            "SyntheticCorpus",
            "exact_match",
            "greedy_generate",
            "make_example",
            "parse_source",
        ),
        ".synthetic",
    ),
    **dict.fromkeys(("TextCorpus", "load_text_corpus", "train_tokenizer"), ".text"),
}
"""The names whose modules import torch, and where they live."""


def __getattr__(name: str) -> Any:
    """A lazy name's value, imported from its module on first use and kept (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DOMAINS",
    "EOD_TOKEN",
    "PAD_TOKEN",
    "BpeTokenizer",
    "CharTokenizer",
    "DocumentStats",
    "Documents",
    "Example",
    "SyntheticCorpus",
    "TextCorpus",
    "check_vocab",
    "exact_match",
    "greedy_generate",
    "iter_documents",
    "load_text_corpus",
    "make_example",
    "parse_source",
    "read_documents",
    "read_files",
    "train_bpe",
    "train_tokenizer",
]
