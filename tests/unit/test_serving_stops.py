"""Stop strings as text arrives (serving/decoding/stops.py, assembler.py): the same first match and the same text
held back as a search of the whole text, and work that grows with the text and the stop strings' total length — one
request with long, self-overlapping stop strings no longer costs the event loop (stop length)² per token."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from moeops.data.bpe import train_bpe
from moeops.data.synthetic import CharTokenizer
from moeops.serving.decoding.assembler import TextAssembler
from moeops.serving.decoding.codec import BpeCodec, CharCodec
from moeops.serving.decoding.stops import StopMatcher, failure_table


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


@dataclass
class CountingCodec:
    """The character codec, noting how many ids each decode is given."""

    inner: CharCodec
    sizes: list[int] = field(default_factory=list)

    @property
    def eos(self) -> int:
        return self.inner.eos

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def encode_prompt(self, text: str) -> list[int]:
        return self.inner.encode_prompt(text)

    def decode(self, ids: Sequence[int]) -> str:
        self.sizes.append(len(ids))
        return self.inner.decode(ids)


def test_decoding_is_incremental() -> None:
    """Each token decodes a few ids, not the whole completion (that cost O(length²) on the event loop)."""
    codec = CountingCodec(CharCodec(CharTokenizer()))
    text = TextAssembler(codec, [])
    ids = CharTokenizer().encode("abc123=+" * 250)
    shown = "".join(text.add(t) for t in ids) + text.rest()
    assert shown == text.text == "abc123=+" * 250
    assert max(codec.sizes) <= 2


def test_byte_level_bpe_pieces_join_to_the_whole_text() -> None:
    corpus = ["héllo wörld, 日本語のテキスト", "naïve café — déjà vu", "plain ascii text here"] * 20
    tokenizer = train_bpe(corpus, 300)
    codec = BpeCodec(tokenizer)
    for sample in ("déjà vu 日本語 wörld", "é日x", "テキスト — café"):
        ids = tokenizer.encode(sample)
        text = TextAssembler(codec, ["本語"])
        shown = ""
        for t in ids:
            piece = text.add(t)
            assert "\ufffd" not in piece
            shown += piece
            if text.stopped:
                break
        shown += text.rest()
        whole = tokenizer.decode(ids)
        cut = whole.find("本語")
        assert shown == (whole if cut < 0 else whole[:cut]), (sample, shown)
