"""A byte-level BPE tokenizer (HuggingFace `tokenizers`), trained or loaded offline: never fetched from a hub.

Byte-level means every string round-trips (any Unicode, any whitespace) with no unknown token: the base
vocabulary is the 256 byte symbols, and training adds merges up to the requested size. The file format is
the library's own `tokenizer.json`, so a tokenizer trained here loads in any `tokenizers`-based tool and
the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD_TOKEN = "<|pad|>"
EOD_TOKEN = "<|endoftext|>"
"""End of document: packing puts one after every document, so the model learns where one text stops."""

SPECIAL_TOKENS = (PAD_TOKEN, EOD_TOKEN)
"""Trained tokenizers get these first, so PAD is id 0 and EOD id 1."""

BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)

MIN_MERGE_FREQUENCY = 2
"""A pair seen once in the whole corpus is not worth a vocabulary slot."""


def check_vocab(tokenizer_vocab: int, model_vocab: int) -> None:
    """ValueError if the tokenizer can produce ids the model's embedding has no row for. A model vocabulary
    larger than the tokenizer's is fine (the extra rows are never used)."""
    if tokenizer_vocab > model_vocab:
        raise ValueError(
            f"the tokenizer has {tokenizer_vocab} tokens but the model's vocab_size is {model_vocab}:"
            f" raise architecture.vocab_size to at least {tokenizer_vocab} or use a smaller tokenizer"
        )


class BpeTokenizer:
    """encode/decode/vocab_size like CharTokenizer, plus the ids packing needs (eod_id, pad_id)."""

    def __init__(self, tokenizer: Tokenizer, origin: str = "<in memory>") -> None:
        eod = tokenizer.token_to_id(EOD_TOKEN)
        if eod is None:
            raise ValueError(f"tokenizer {origin} has no end-of-document token {EOD_TOKEN!r}")
        self._tokenizer = tokenizer
        self.eod_id = eod
        # A tokenizer from elsewhere (GPT-2's, say) may have no pad token. Padding only fills the tail of the
        # last window, where every target is ignored, so any id does; EOD is the least surprising one.
        pad = tokenizer.token_to_id(PAD_TOKEN)
        self.pad_id = eod if pad is None else pad
        # One past the largest id rather than get_vocab_size(): what an embedding table must cover even if a
        # hand-made file leaves gaps in its ids.
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def load(cls, path: str | Path) -> BpeTokenizer:
        """From a `tokenizer.json` on disk. ValueError naming the path if it is missing or not a tokenizer."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # the library raises plain Exception for a malformed file
            raise ValueError(f"{path} is not a readable tokenizer.json: {err}") from err
        return cls(tokenizer, origin=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(path))

    def to_json(self) -> str:
        """The whole tokenizer as `tokenizer.json` text: two tokenizers are the same iff this is."""
        return self._tokenizer.to_str()

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many texts at once: the library spreads them over threads, which matters for a whole corpus."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def train_bpe(documents: Iterable[str], vocab_size: int) -> BpeTokenizer:
    """A byte-level BPE tokenizer trained on `documents`, with at most `vocab_size` tokens (fewer if the
    corpus has fewer pairs worth merging). Deterministic: the same documents and size give the same
    tokenizer in any process, so every rank of a job can train its own and they agree."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a byte-level tokenizer: it needs at least {MIN_VOCAB_SIZE}"
            f" ({BYTE_ALPHABET_SIZE} bytes and {len(SPECIAL_TOKENS)} special tokens)"
        )
    tokenizer = Tokenizer(models.BPE())
    # No prefix space: decode(encode(text)) must give back exactly `text`.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_MERGE_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes even if the corpus lacks some: later text may use them, and byte-level has no UNK.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return BpeTokenizer(tokenizer)
