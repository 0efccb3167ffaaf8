"""Training on your own text: a `file://` or `pvc://` corpus (text or jsonl), a byte-level BPE tokenizer, packed
windows.

Packing: each document is tokenized and followed by the end-of-document token, and the documents are joined
in reading order (see moeops.data.documents) into one token stream. The stream is cut into W windows of
seq_len+1 tokens, window i starting at token i*seq_len, so consecutive windows share one token and every
token but the first is a target exactly once per epoch; the last window is padded if the stream runs out.

Order: the g-th sequence of a run, g = step * global_batch + row, is window perm_e[g mod W] of epoch
e = g div W, where perm_e is a permutation of the windows seeded by (seed, e). Each epoch therefore sees every
window once, in a fresh order, and a batch is a pure function of (seed, step, row, global batch size): a
resumed run or another world size with the same global batch sees exactly the same data.

Memory: the documents are streamed from the files (moeops.data.documents) through the tokenizer into a token
file that every rank memory-maps (moeops.data.token_store); a rank reads only the windows of its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from moeops.api.v1alpha1.data import DATA_MOUNT_ROOT

from .bpe import BpeTokenizer, check_vocab, train_bpe
from .documents import iter_documents, source_files, source_path
from .synthetic import IGNORE_INDEX, stream_seed
from .token_store import cached_tokenizer, cached_tokens, corpus_key, files_key

DEFAULT_TRAINED_VOCAB_SIZE = 4096
"""Size of a tokenizer trained on the corpus when the caller gives no model vocab_size."""

_CACHED_EPOCHS = 2
"""Permutations kept in memory: a global batch spans at most two epochs unless it exceeds the corpus."""


class TextCorpus:
    """Packed, shuffled windows of tokenized documents, served as batch(step, ...) like SyntheticCorpus."""

    def __init__(self, stream: Tensor, tokenizer: BpeTokenizer, seq_len: int, seed: int, documents: int) -> None:
        """stream: the packed tokens (int32, 1-D; memory-mapped from a token file in a run), `documents` of them."""
        if documents < 1 or len(stream) < 1:
            raise ValueError("a text corpus needs at least one document")
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        self.tokenizer, self.seq_len, self.seed = tokenizer, seq_len, seed
        self.vocab_size = tokenizer.vocab_size
        self.document_count = documents
        self.stream = stream
        self.windows = -(-(len(self.stream) - 1) // seq_len)  # ceil: the last, partial window is padded
        self._permutations: dict[int, Tensor] = {}

    @classmethod
    def from_documents(cls, documents: Sequence[str], tokenizer: BpeTokenizer, seq_len: int, seed: int) -> TextCorpus:
        """A corpus of documents held in memory (tests, small corpora): the same stream a token file would hold."""
        stream = [token for ids in tokenizer.encode_batch(documents) for token in (*ids, tokenizer.eod_id)]
        return cls(torch.tensor(stream, dtype=torch.int32), tokenizer, seq_len, seed, len(documents))

    def _permutation(self, epoch: int) -> Tensor:
        """The window order of `epoch`. Memoised (a pure function of seed and epoch, so the cache changes
        nothing but speed)."""
        if epoch not in self._permutations:
            if len(self._permutations) >= _CACHED_EPOCHS:
                del self._permutations[min(self._permutations)]
            generator = torch.Generator().manual_seed(stream_seed(self.seed, "text-epoch", epoch))
            self._permutations[epoch] = torch.randperm(self.windows, generator=generator)
        return self._permutations[epoch]

    def window_of(self, sequence: int) -> int:
        """Which window the run's `sequence`-th sequence (counting from 0 over all steps and rows) reads."""
        epoch, position = divmod(sequence, self.windows)
        return int(self._permutation(epoch)[position])

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[Tensor, Tensor]:
        """(inputs_BS, targets_BS), int64, shape (batch_size, seq_len), for this rank's share of global step `step`.
        The global batch of a step is batch_size * world_size sequences; rank r takes its rows
        r*batch_size..(r+1)*batch_size-1. No state is carried between calls (see the module docstring).
        targets = the next token of every input; -100 only where the last window is padded."""
        if step < 0 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch request: step={step} batch_size={batch_size} rank={rank}/{world_size}")
        return self.rows(step, rank * batch_size, batch_size, batch_size * world_size)

    def rows(self, step: int, first: int, count: int, global_batch: int) -> tuple[Tensor, Tensor]:
        """Rows first..first+count-1 of global step `step`'s batch of `global_batch` sequences (an uneven split
        of the batch over ranks takes any contiguous range; `batch` is the even split)."""
        if step < 0 or count < 1 or first < 0 or first + count > global_batch:
            raise ValueError(f"bad rows request: step={step} rows [{first}, {first + count}) of {global_batch}")
        first_window = step * global_batch + first
        tokens_BS1 = torch.full((count, self.seq_len + 1), self.tokenizer.pad_id, dtype=torch.int64)
        real_BS1 = torch.zeros((count, self.seq_len + 1), dtype=torch.bool)
        for row in range(count):
            start = self.window_of(first_window + row) * self.seq_len
            window = self.stream[start : start + self.seq_len + 1]
            tokens_BS1[row, : len(window)] = window
            real_BS1[row, : len(window)] = True
        targets_BS = tokens_BS1[:, 1:].masked_fill(~real_BS1[:, 1:], IGNORE_INDEX)
        return tokens_BS1[:, :-1].contiguous(), targets_BS


def train_tokenizer(
    files: Sequence[str | Path], vocab_size: int, out_path: str | Path, *, fmt: str = "text", text_field: str = "text"
) -> BpeTokenizer:
    """Train a byte-level BPE tokenizer on the documents of these files (read as `fmt`, like a corpus) and save
    it as `tokenizer.json` at out_path. Offline: nothing is downloaded."""
    tokenizer = train_bpe(iter_documents(files, fmt, text_field), vocab_size)
    tokenizer.save(out_path)
    return tokenizer


def load_text_corpus(
    source: str,
    fmt: str,
    seq_len: int,
    seed: int,
    tokenizer_path: str | None,
    *,
    vocab_size: int | None = None,
    text_field: str = "text",
    data_root: str | Path = DATA_MOUNT_ROOT,
    cache_dir: Path | None = None,
) -> TextCorpus:
    """The corpus of a `file://` or `pvc://` source in format `text` or `jsonl` (DataSpec.source and .format).

    tokenizer_path: a `tokenizer.json` to load; None trains a byte-level BPE tokenizer on this corpus's own
    documents. That training is deterministic (it depends only on the documents and the size), so every
    rank of a job trains the same tokenizer without talking to the others; save `corpus.tokenizer` next to
    the checkpoint to decode the model's output later.
    vocab_size: the model's architecture.vocab_size. A trained tokenizer gets at most that many tokens
    (DEFAULT_TRAINED_VOCAB_SIZE if None) and a loaded one must fit in it (see check_vocab).
    data_root: where `pvc://<claim>/...` claims are (one folder per claim). cache_dir: where token files go
    (moeops.data.token_store; default under the temporary directory).
    Raises ValueError naming the path for a missing path, an empty corpus, or a format other than text/jsonl."""
    files = source_files(source_path(source, data_root), fmt)
    if tokenizer_path is None:
        size = vocab_size or DEFAULT_TRAINED_VOCAB_SIZE
        tokenizer = cached_tokenizer(
            files_key(files, fmt, text_field, f"bpe-{size}"),
            lambda: train_bpe(iter_documents(files, fmt, text_field), size),
            cache_dir,
        )
    else:
        tokenizer = BpeTokenizer.load(tokenizer_path)
    if vocab_size is not None:
        check_vocab(tokenizer.vocab_size, vocab_size)
    key = corpus_key(files, fmt, text_field, tokenizer)
    stored = cached_tokens(key, iter_documents(files, fmt, text_field), tokenizer, cache_dir)
    return TextCorpus(stored.open(), tokenizer, seq_len, seed, stored.documents)
