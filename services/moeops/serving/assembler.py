"""A choice's text as its tokens arrive: deltas for streaming that never show a stop string (text that could still
become one is held back), and the final text cut before the first stop string (stops.py finds them in time
proportional to the new text)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .codec import Codec
from .stops import StopMatcher


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
        self._fed = ""

    def add(self, token: int) -> str:
        """The new text that may be shown now; sets `stopped` when a stop string appeared."""
        if token != self.codec.eos:
            self.ids.append(token)
        full = self.codec.decode(self.ids)
        if full.endswith("\ufffd"):  # a character cut between byte-level tokens: wait for the rest
            return ""
        if not full.startswith(self._fed):  # a tokenizer whose text changed behind us: search it all again
            self._matcher, self._fed = StopMatcher(self.stops), ""
        self._matcher.feed(full[len(self._fed) :])
        self._fed = self.text = full
        if self._matcher.first_match is not None:
            self.stopped, self.text = True, full[: self._matcher.first_match]
            return self._emit(len(self.text))
        return self._emit(len(full) - self._matcher.hold)

    def rest(self) -> str:
        """What is left to show once generation has ended."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return delta
