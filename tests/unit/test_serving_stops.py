"""Stop strings as text arrives (serving/stops.py, assembler.py): the same first match and the same text held back
as a search of the whole text, and work that grows with the text and the stop strings' total length — one request
with long, self-overlapping stop strings no longer costs the event loop (stop length)² per token."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from moeops.data.synthetic import CharTokenizer
from moeops.serving.assembler import TextAssembler
from moeops.serving.codec import CharCodec
from moeops.serving.stops import StopMatcher, failure_table


def naive(text: str, stops: list[str]) -> tuple[int | None, int]:
    """The whole-text search the matcher replaces: the earliest start of any stop string, and the longest end of
    the text that is a proper prefix of one."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return min(hits), 0
    return None, max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def test_failure_table() -> None:
    assert failure_table("abab") == [0, 0, 1, 2]
    assert failure_table("aabaaab") == [0, 1, 0, 1, 2, 2, 3]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text("ab", min_size=1, max_size=5), max_size=4),
    st.lists(st.text("abc", min_size=1, max_size=3), max_size=12),
)
def test_the_matcher_agrees_with_a_search_of_the_whole_text(stops: list[str], pieces: list[str]) -> None:
    matcher, text = StopMatcher(stops), ""
    for piece in pieces:
        before = matcher.first_match
        matcher.feed(piece)
        text += piece
        if before is not None:  # the first match is final
            assert matcher.first_match == before
            continue
        first, hold = naive(text, stops)
        assert (matcher.first_match, matcher.hold) == (first, hold), (text, stops)


def test_work_does_not_grow_with_the_square_of_the_stop_length() -> None:
    """Self-overlapping stop strings of 256 characters against a text that keeps almost matching them: per
    character the matcher does amortised O(1) per stop string, so 256-character stop strings cost about what
    1-character ones do (the whole-text check costs 256² character comparisons per token more)."""
    text = ("a" * 255 + "b") * 40

    def seconds(stops: list[str]) -> float:
        best = float("inf")
        for _ in range(3):
            matcher, started = StopMatcher(stops), time.perf_counter()
            for ch in text:
                matcher.feed(ch)
            best = min(best, time.perf_counter() - started)
        assert matcher.first_match is None
        return best

    long = seconds(["a" * 256, "a" * 255 + "c", "a" * 200 + "c", "c" * 256])
    short = seconds(["c", "d", "e", "f"])
    assert long < 5 * short + 0.05, (long, short)


def test_the_assembler_holds_back_what_may_become_a_stop_string_and_cuts_before_it() -> None:
    tokenizer = CharTokenizer()
    codec = CharCodec(tokenizer)
    text = TextAssembler(codec, ["c=d", "zz"])
    shown = "".join(text.add(t) for t in tokenizer.encode("ab c=") if not text.stopped)
    assert shown == "ab " and not text.stopped  # "c=" may become "c=d": held back
    assert text.add(tokenizer.encode("x")[0]) == "c=x"
    assert text.add(tokenizer.encode("c")[0]) == ""
    assert text.add(tokenizer.encode("=")[0]) == ""
    assert text.add(tokenizer.encode("d")[0]) == "" and text.stopped
    assert text.text == "ab c=x" and text.rest() == ""
