"""What two documents must share to be duplicates: their text after normalisation.

NFKC folds compatibility forms (full-width letters, ligatures), casefold folds case, and every run of white
space becomes one space, so a copy re-wrapped or re-cased is still an exact duplicate. Punctuation is kept:
it is content (code, numbers), and near-dup detection absorbs small differences anyway.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_hash(normalised: str) -> int:
    """A 64-bit hash of normalised text (blake2b: stable across processes and machines, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(normalised.encode("utf-8"), digest_size=8).digest(), "little")
