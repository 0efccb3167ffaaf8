"""Stop strings found as text arrives, in time proportional to the text and the stop strings' total length.

A naive check searches the whole text for every stop string after every token and tries every prefix of every stop
string against the text's end (what may still become a stop string, held back from a stream): O(text × stops) and
O(stop length²) per token, on the event loop. One hostile request with thousands of long stop strings then starves
every other request and the liveness probe. Here each stop string keeps a Knuth–Morris–Pratt state (the length of
its longest prefix that the text ends with), updated per new character in amortised O(1): a match is a state equal
to the string's length, and the text to hold back is the largest state. The request schema bounds the count and
length of stop strings as well (api_models.MAX_STOP_SEQUENCES, MAX_STOP_CHARS).
"""

from __future__ import annotations

from collections.abc import Sequence


def failure_table(pattern: str) -> list[int]:
    """KMP's table: for each prefix length i+1, the length of its longest proper prefix that is also its suffix."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


class StopMatcher:
    """Feed the text as it grows; `first_match` is where the earliest stop string starts (None: none yet), and
    `hold` how many characters at the end could still begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._tables = [failure_table(s) for s in self.stops]
        self._states = [0] * len(self.stops)
        self.length = 0
        """Characters fed so far."""
        self.first_match: int | None = None

    def feed(self, text: str) -> None:
        """The next characters of the text, as one piece (a token's text): of the stop strings that complete in it,
        the one that starts first wins, as a search of the whole text would find. After a match, nothing changes."""
        if self.first_match is not None:
            return
        for ch in text:
            self.length += 1
            for i, (stop, table) in enumerate(zip(self.stops, self._tables, strict=True)):
                k = self._states[i]
                while k and stop[k] != ch:
                    k = table[k - 1]
                if stop[k] == ch:
                    k += 1
                if k == len(stop):
                    start = self.length - k
                    self.first_match = start if self.first_match is None else min(self.first_match, start)
                    k = table[k - 1]
                self._states[i] = k

    @property
    def hold(self) -> int:
        """Characters at the end of the text that a stop string may still start with (0 after a match)."""
        if self.first_match is not None:
            return 0
        return max(self._states, default=0)
