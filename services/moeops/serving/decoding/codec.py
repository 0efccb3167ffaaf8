"""Text in and out of the served model: the tokenizer the model was trained with, as the server needs it.

`moeops train` keeps a trained BPE tokenizer as `tokenizer.json` beside the checkpoints (trainer/corpus.py) when the
run's data was text; a run on the synthetic corpus has none and used the CharTokenizer. So: `tokenizer.json` in the
checkpoint root (the directory of `step-XXXXXXXX`) means BPE, and its absence the synthetic character tokenizer.

A text prompt becomes what the model saw before every answer in training: BOS prompt SEP for the synthetic corpus
(its examples are BOS prompt SEP answer EOS), the plain ids for BPE (documents are packed back to back, separated by
the end-of-document token, which is also where generation stops). A prompt given as token ids is used as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from moeops.checkpoint.layout import TOKENIZER_FILE
from moeops.data.bpe import BpeTokenizer, check_vocab
from moeops.data.synthetic import CharTokenizer


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def eos(self) -> int:
        """The id that ends a completion (finish_reason "stop")."""
        ...

    @property
    def vocab_size(self) -> int: ...

    def encode_prompt(self, text: str) -> list[int]:
        """The ids of a text prompt; ValueError (the client's fault) when it cannot be encoded."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids: special ids and ids the tokenizer does not know (a model's vocabulary may be
        larger than its tokenizer's) are dropped, never an error."""
        ...


@dataclass
class CharCodec:
    tokenizer: CharTokenizer
    name: str = "synthetic-char"

    @property
    def eos(self) -> int:
        return self.tokenizer.EOS

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode_prompt(self, text: str) -> list[int]:
        return [self.tokenizer.BOS, *self.tokenizer.encode(text), self.tokenizer.SEP]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if 0 <= i < self.tokenizer.vocab_size])


@dataclass
class BpeCodec:
    tokenizer: BpeTokenizer
    name: str = "bpe"

    @property
    def eos(self) -> int:
        return self.tokenizer.eod_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode_prompt(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if 0 <= i < self.tokenizer.vocab_size])


def codec_for(checkpoint_root: Path, model_vocab: int) -> Codec:
    """The tokenizer of the run whose checkpoints are in `checkpoint_root`; ValueError when it cannot serve a
    model of `model_vocab` ids."""
    path = checkpoint_root / TOKENIZER_FILE
    codec: Codec = BpeCodec(BpeTokenizer.load(path)) if path.is_file() else CharCodec(CharTokenizer())
    check_vocab(codec.vocab_size, model_vocab)
    return codec
