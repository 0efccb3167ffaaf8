"""A choice's text as its tokens arrive: deltas for streaming that never show a stop string (text that could still
become one is held back), and the final text cut before the first stop string.

Both steps cost the new text, not the whole text, per token: decoding is incremental (as vLLM's detokenizer does it:
the text of the tokens since the last emitted piece, read against the piece before them, so a character split
between byte-level tokens waits for its last byte and a tokenizer that joins tokens with context still agrees), and
stops.py finds stop strings in time proportional to the new characters. Decoding the whole completion after every
token cost O(length²) on the event loop: seconds of it for one request of a few thousand tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moeops.serving.decoding.codec import Codec
from moeops.serving.decoding.stops import StopMatcher


@dataclass
class TextAssembler:
    codec: Codec
    stops: list[str]
    ids: list[int] = field(default_factory=list)
    emitted: int = 0
    text: str = ""
    stopped: bool = False

    def __post_init__(self) -> None:
        self._matcher = StopMatcher(self.stops)
        self._prefix = self._read = 0
        """ids[_prefix:_read] were decoded last time (the context of the next piece); ids[_read:] are new."""

    def add(self, token: int) -> str:
        """The new text that may be shown now; sets `stopped` when a stop string appeared."""
        if token != self.codec.eos:
            self.ids.append(token)
        before = self.codec.decode(self.ids[self._prefix : self._read])
        after = self.codec.decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):  # no text yet, or a character cut in two
            return ""
        piece = after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += piece
        self._matcher.feed(piece)
        if self._matcher.first_match is not None:
            self.stopped, self.text = True, self.text[: self._matcher.first_match]
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._matcher.hold)

    def rest(self) -> str:
        """What is left to show once generation has ended."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return delta
