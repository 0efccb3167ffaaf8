"""Tokenized corpora on disk: documents streamed through the tokenizer into a flat int32 file, then memory-mapped.

Why a file: the packed token stream of a corpus (moeops.data.text) must be addressable at any window, but a
rank reads only the windows of its own rows of each batch. Memory-mapped, the stream costs a rank the pages
of the windows it reads, not the corpus; and tokenizing a chunk of documents at a time bounds the memory of
building it (the old way held every text, then a Python list of every id). A tokenizer trained on the corpus is
kept here the same way, so the ranks of a pod train it once.

A file is named by a key over everything that decides its content (the source files with their sizes and
modification times, the format, the text field, the whole tokenizer), so a restarted worker, or a second rank
of the same pod, reuses it instead of tokenizing again. Building takes an exclusive lock on the key, so ranks
that start together tokenize once; the file appears under its name only when complete (written aside, renamed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .bpe import BpeTokenizer

TOKEN_DTYPE = np.int32
CHUNK_DOCUMENTS = 512
"""Documents tokenized per call: enough for the tokenizer's threads, few enough to bound memory."""

CACHE_DIR_NAME = "moeops-tokens"


@dataclass(frozen=True)
class TokenFile:
    path: Path
    tokens: int
    documents: int

    def open(self) -> Tensor:
        """The stream, memory-mapped (copy-on-write: nothing ever writes back to the file)."""
        return torch.from_numpy(np.memmap(self.path, dtype=TOKEN_DTYPE, mode="c", shape=(self.tokens,)))


def default_cache_dir() -> Path:
    """Under the temporary directory: a pod's /tmp is its own emptyDir (the root filesystem is read-only)."""
    return Path(tempfile.gettempdir()) / CACHE_DIR_NAME


def files_key(files: Sequence[Path], fmt: str, text_field: str, *extra: str) -> str:
    """A name for what these files hold read this way (their sizes and modification times stand for content)."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update("\0".join((fmt, text_field, *extra)).encode())
    return digest.hexdigest()[:32]


def corpus_key(files: Sequence[Path], fmt: str, text_field: str, tokenizer: BpeTokenizer) -> str:
    """A name for the token file of these files read this way by this tokenizer."""
    return files_key(files, fmt, text_field, tokenizer.to_json())


@contextlib.contextmanager
def _locked(cache_dir: Path, key: str) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def cached_tokenizer(key: str, train: Callable[[], BpeTokenizer], cache_dir: Path | None = None) -> BpeTokenizer:
    """The tokenizer trained for `key` (files_key of the corpus and the size), trained by `train` only if no rank
    of this pod has saved one yet: the ranks of a GPU pod train it once, not once each."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    path = cache_dir / f"{key}.tokenizer.json"
    with _locked(cache_dir, key):
        if path.is_file():
            return BpeTokenizer.load(path)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        train().save(partial)
        partial.replace(path)
        # Read back like the other ranks do: every rank then holds the same tokenizer.json, byte for byte, and names
        # the same token file (corpus_key hashes it).
        return BpeTokenizer.load(path)


def _chunks(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for doc in documents:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_tokens(documents: Iterable[str], tokenizer: BpeTokenizer, path: Path) -> TokenFile:
    """Tokenize the documents, each followed by the end-of-document token, into `path` (int32, native order)."""
    if tokenizer.vocab_size > np.iinfo(TOKEN_DTYPE).max:
        raise ValueError(f"a vocabulary of {tokenizer.vocab_size} ids does not fit the token file's int32")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tokens = count = 0
    try:
        with partial.open("wb") as out:
            for chunk in _chunks(documents, CHUNK_DOCUMENTS):
                for ids in tokenizer.encode_batch(chunk):
                    ids.append(tokenizer.eod_id)
                    np.asarray(ids, dtype=TOKEN_DTYPE).tofile(out)
                    tokens += len(ids)
                count += len(chunk)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return TokenFile(path, tokens, count)


def cached_tokens(
    key: str, documents: Iterable[str], tokenizer: BpeTokenizer, cache_dir: Path | None = None
) -> TokenFile:
    """The token file of `key`, built from `documents` only if no complete one exists yet (see the module
    docstring). `documents` is not read at all when the file is reused."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    path, meta = cache_dir / f"{key}.tokens", cache_dir / f"{key}.json"
    with _locked(cache_dir, key):
        if meta.is_file() and path.is_file():
            found = json.loads(meta.read_text())
            if path.stat().st_size == found["tokens"] * np.dtype(TOKEN_DTYPE).itemsize:
                return TokenFile(path, found["tokens"], found["documents"])
        built = write_tokens(documents, tokenizer, path)
        meta.write_text(json.dumps({"tokens": built.tokens, "documents": built.documents}))
        return built
