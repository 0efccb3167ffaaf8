"""A deterministic multi-domain character corpus: six small tasks with different rules and exact answers.

Why synthetic: a small MoE trained on it shows (or fails to show) expert specialisation per domain, and each
domain has an exact-match score, so "did it learn" and "did the experts split the work" are measurable
without downloading anything. Every batch is a pure function of (seed, step, global row), so a resumed run
sees exactly the data of an uninterrupted one and any world size with the same global batch sees the same
global data.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

DOMAINS: tuple[str, ...] = ("arithmetic", "copy", "reverse", "brackets", "recall", "template")

IGNORE_INDEX = -100
"""Target value the loss skips (torch's cross_entropy default)."""

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz +-=:|;,?>()[]{}"
"""Every character any domain produces; ids are 4 + its index here (0..3 are the special tokens)."""

# Upper bounds of BOS + prompt + SEP + answer + EOS per domain, from the generators' limits below (a test
# checks them by sampling): the corpus refuses a seq_len that could not hold one example of each domain.
MAX_EXAMPLE_TOKENS: dict[str, int] = {
    "arithmetic": 15,  # "999+999=" and "1998"
    "copy": 33,  # "copy:" + 12 letters + "|", and the 12 letters
    "reverse": 32,
    "brackets": 23,  # "bal:" + 12 brackets + "|", and "yes"
    "recall": 33,  # "kv:" + 6 "k=v" pairs, ";k?", and one digit
    "template": 46,  # "name:hana job:pilot ->" and "hana works as a pilot"
}

HELD_OUT_ONE_IN = 16
"""One prompt in this many (by a seeded hash of its text) is reserved for evaluation and never trained on."""


class CharTokenizer:
    """Character-level tokenizer over a fixed alphabet; ids 0..3 are PAD, BOS, EOS, SEP."""

    PAD, BOS, EOS, SEP = 0, 1, 2, 3
    SPECIALS = 4

    def __init__(self) -> None:
        self.vocab_size = self.SPECIALS + len(ALPHABET)
        self._id_of = {ch: self.SPECIALS + i for i, ch in enumerate(ALPHABET)}

    def encode(self, text: str) -> list[int]:
        try:
            return [self._id_of[ch] for ch in text]
        except KeyError as err:
            i = next(i for i, ch in enumerate(text) if ch not in self._id_of)
            raise ValueError(f"character {text[i]!r} at position {i} is not in the vocabulary {ALPHABET!r}") from err

    def decode(self, ids: Sequence[int]) -> str:
        out: list[str] = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            if i >= self.SPECIALS:
                out.append(ALPHABET[i - self.SPECIALS])
        return "".join(out)


@dataclass(frozen=True)
class Example:
    domain: str
    prompt: str
    answer: str


# -- the domains ---------------------------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"
OPENERS, CLOSERS = "([{", ")]}"

# (first slot, second slot, sentence): few enough words that names and places recur in many combinations.
TEMPLATES: tuple[tuple[str, str, str], ...] = (
    ("name", "city", "{0} lives in {1}"),
    ("name", "job", "{0} works as a {1}"),
    ("name", "food", "{0} likes {1}"),
    ("item", "color", "the {0} is {1}"),
)
SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "name": ("ada", "bob", "cleo", "dan", "eve", "finn", "gus", "hana", "ivy", "jon"),
    "city": ("rome", "oslo", "lima", "paris", "cairo", "tokyo", "quito", "delhi"),
    "job": ("baker", "pilot", "nurse", "judge", "chef", "miner"),
    "food": ("pasta", "rice", "soup", "bread", "figs", "plums"),
    "item": ("lamp", "door", "vase", "kite", "boat"),
    "color": ("red", "blue", "green", "gray", "pink"),
}


def _number(rng: random.Random) -> int:
    """0..999 with 1, 2 and 3 digits equally likely (uniform would make nearly all of them 3-digit)."""
    digits = rng.randint(1, 3)
    return rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def _arithmetic(rng: random.Random) -> Example:
    a, b = _number(rng), _number(rng)
    if rng.random() < 0.5:
        return Example("arithmetic", f"{a}+{b}=", str(a + b))
    a, b = max(a, b), min(a, b)  # results stay non-negative: no "-" in answers
    return Example("arithmetic", f"{a}-{b}=", str(a - b))


def _letters(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 12)))


def _copy(rng: random.Random) -> Example:
    text = _letters(rng)
    return Example("copy", f"copy:{text}|", text)


def _reverse(rng: random.Random) -> Example:
    text = _letters(rng)
    return Example("reverse", f"rev:{text}|", text[::-1])


def is_balanced(text: str) -> bool:
    stack: list[str] = []
    for ch in text:
        if ch in OPENERS:
            stack.append(CLOSERS[OPENERS.index(ch)])
        elif not stack or stack.pop() != ch:
            return False
    return not stack


def _balanced(rng: random.Random, pairs: int) -> str:
    out: list[str] = []
    stack: list[str] = []
    opened = 0
    while len(out) < 2 * pairs:
        if opened < pairs and (not stack or rng.random() < 0.5):
            kind = rng.randrange(3)
            out.append(OPENERS[kind])
            stack.append(CLOSERS[kind])
            opened += 1
        else:
            out.append(stack.pop())
    return "".join(out)


def _brackets(rng: random.Random) -> Example:
    chars = list(_balanced(rng, rng.randint(1, 6)))
    if rng.random() < 0.5:
        # Break it by one edit, so "no" strings look like "yes" ones: a substitution (same length, always
        # unbalanced: counts or nesting break) or, less often, a deletion (odd length).
        i = rng.randrange(len(chars))
        if len(chars) > 2 and rng.random() < 0.25:
            del chars[i]
        else:
            chars[i] = rng.choice([c for c in OPENERS + CLOSERS if c != chars[i]])
    text = "".join(chars)
    return Example("brackets", f"bal:{text}|", "yes" if is_balanced(text) else "no")


def _recall(rng: random.Random) -> Example:
    keys = rng.sample(LETTERS, rng.randint(2, 6))
    values = {k: str(rng.randrange(10)) for k in keys}
    query = rng.choice(keys)
    pairs = ",".join(f"{k}={values[k]}" for k in keys)
    return Example("recall", f"kv:{pairs};{query}?", values[query])


def _template(rng: random.Random) -> Example:
    first, second, sentence = rng.choice(TEMPLATES)
    a, b = rng.choice(SLOT_WORDS[first]), rng.choice(SLOT_WORDS[second])
    return Example("template", f"{first}:{a} {second}:{b} ->", sentence.format(a, b))


_MAKERS: dict[str, Callable[[random.Random], Example]] = dict(
    zip(DOMAINS, (_arithmetic, _copy, _reverse, _brackets, _recall, _template), strict=True)
)


def _check_domain(domain: str) -> None:
    if domain not in _MAKERS:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")


def make_example(domain: str, rng: random.Random) -> Example:
    _check_domain(domain)
    return _MAKERS[domain](rng)


def parse_source(source: str) -> tuple[str, ...]:
    """`synthetic://arithmetic,copy` -> ("arithmetic", "copy"); `synthetic://all` -> DOMAINS.
    ValueError with a clear message for another scheme or an unknown domain name."""
    scheme = "synthetic://"
    usage = f"expected '{scheme}all' or '{scheme}<domain>[,<domain>...]' with domains from {', '.join(DOMAINS)}"
    if not source.startswith(scheme):
        raise ValueError(f"unsupported data source {source!r}: {usage}")
    names = [n.strip() for n in source.removeprefix(scheme).split(",")]
    if names == ["all"]:
        return DOMAINS
    for name in names:
        if name not in DOMAINS:
            raise ValueError(f"unknown domain {name!r} in data source {source!r}: {usage}")
    if len(set(names)) != len(names):
        raise ValueError(f"a domain is listed twice in data source {source!r}")
    return tuple(names)


# -- the corpus ----------------------------------------------------------------------------------------------


def stream_seed(*parts: object) -> int:
    """A stable 64-bit seed from the parts (not hash(): that is randomised per process for str)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SyntheticCorpus:
    def __init__(self, domains: Sequence[str], seed: int, seq_len: int, tokenizer: CharTokenizer | None = None) -> None:
        self.domains = tuple(domains)
        if not self.domains:
            raise ValueError("a corpus needs at least one domain")
        for d in self.domains:
            _check_domain(d)
        longest = max(MAX_EXAMPLE_TOKENS[d] for d in self.domains)
        if seq_len + 1 < longest:
            raise ValueError(f"seq_len {seq_len} is too short: examples of {self.domains} take up to {longest} tokens")
        self.seed, self.seq_len = seed, seq_len
        self.tokenizer = tokenizer or CharTokenizer()

    def is_held_out(self, example: Example) -> bool:
        """Whether this prompt belongs to the evaluation set. By content, not only by rng stream, so that a
        prompt that comes up by chance in both streams (short bracket strings, template combinations) is
        still never trained on and exact match measures generalisation, not recall."""
        return stream_seed(self.seed, "held-out", example.domain, example.prompt) % HELD_OUT_ONE_IN == 0

    def _row(self, step: int, row: int) -> tuple[list[int], list[int]]:
        """Global row `row` of step `step`: examples packed whole (one that doesn't fit ends the row; the rest
        is PAD), BOS prompt SEP answer EOS each. Returns seq_len+1 tokens and, per token, whether the loss
        counts it (answer characters and the EOS after them)."""
        rng = random.Random(stream_seed(self.seed, "train", step, row))
        tok = self.tokenizer
        tokens: list[int] = []
        counted: list[int] = []
        while True:
            example = make_example(rng.choice(self.domains), rng)
            if self.is_held_out(example):
                continue
            prompt, answer = tok.encode(example.prompt), tok.encode(example.answer)
            if len(tokens) + len(prompt) + len(answer) + 3 > self.seq_len + 1:
                break
            tokens += [tok.BOS, *prompt, tok.SEP, *answer, tok.EOS]
            counted += [0] * (len(prompt) + 2) + [1] * (len(answer) + 1)
        pad = self.seq_len + 1 - len(tokens)
        return tokens + [tok.PAD] * pad, counted + [0] * pad

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[Tensor, Tensor]:
        """(inputs_BS, targets_BS), int64, shape (batch_size, seq_len), for this rank's share of global step `step`.
        Deterministic: the same (seed, step, rank, world_size, batch_size) always gives the same tensors, with no
        state carried between calls, so resuming at step k reproduces exactly the data of an uninterrupted run.
        The global batch of a step is batch_size * world_size sequences; rank r takes its rows
        r*batch_size..(r+1)*batch_size-1, so that different world sizes with the same global batch see the same
        global data.
        Each sequence packs examples as BOS prompt SEP answer EOS ... up to seq_len+1 tokens (pad with PAD);
        inputs = tokens[:-1], targets = tokens[1:] with every position that is not an answer token or the EOS
        after an answer set to -100 (loss only on answers)."""
        if step < 0 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch request: step={step} batch_size={batch_size} rank={rank}/{world_size}")
        return self.rows(step, rank * batch_size, batch_size, batch_size * world_size)

    def rows(self, step: int, first: int, count: int, global_batch: int) -> tuple[Tensor, Tensor]:
        """Rows first..first+count-1 of global step `step`'s batch of `global_batch` sequences (an uneven split
        of the batch over ranks takes any contiguous range; `batch` is the even split)."""
        if step < 0 or count < 1 or first < 0 or first + count > global_batch:
            raise ValueError(f"bad rows request: step={step} rows [{first}, {first + count}) of {global_batch}")
        rows = [self._row(step, first + i) for i in range(count)]
        tokens_BS1 = torch.tensor([t for t, _ in rows], dtype=torch.int64)
        counted_BS1 = torch.tensor([c for _, c in rows], dtype=torch.bool)
        targets_BS = tokens_BS1[:, 1:].masked_fill(~counted_BS1[:, 1:], IGNORE_INDEX)
        return tokens_BS1[:, :-1].contiguous(), targets_BS

    def eval_examples(self, domain: str, count: int) -> list[Example]:
        """A held-out set per domain, derived from the seed but disjoint from the training stream: only held-out
        prompts (see is_held_out), drawn from their own rng stream; a shorter count is a prefix of a longer one.
        Duplicates are possible where a domain has few distinct prompts (brackets, template)."""
        _check_domain(domain)
        rng = random.Random(stream_seed(self.seed, "eval", domain))
        out: list[Example] = []
        while len(out) < count:
            example = make_example(domain, rng)
            if self.is_held_out(example):
                out.append(example)
        return out


# -- evaluation ----------------------------------------------------------------------------------------------


class _HasLogits(Protocol):
    @property
    def logits_BSV(self) -> Tensor: ...


def prompt_ids(tokenizer: CharTokenizer, prompt: str) -> Tensor:
    """BOS prompt SEP as a (1, S) int64 tensor: what the model saw before every answer in training."""
    return torch.tensor([[tokenizer.BOS, *tokenizer.encode(prompt), tokenizer.SEP]], dtype=torch.int64)


@torch.no_grad()
def greedy_generate(
    model: Callable[[Tensor], _HasLogits], prompt_ids_1S: Tensor, max_new_tokens: int, *, context: int | None = None
) -> Tensor:
    """Up to max_new_tokens argmax tokens after the prompt, stopping after an EOS; a 1D tensor of the new ids,
    on the prompt's device. No KV cache: the prompts are short. `context` keeps only the last that many tokens
    as the model's input (a model with a fixed position table, like moeops.model.Transformer, needs its
    seq_len here once prompt + generated exceed it)."""
    tokens_1S = prompt_ids_1S
    new: list[Tensor] = []
    for _ in range(max_new_tokens):
        window_1S = tokens_1S if context is None else tokens_1S[:, -context:]
        next_1 = model(window_1S).logits_BSV[0, -1].argmax(-1, keepdim=True)
        new.append(next_1)
        tokens_1S = torch.cat([tokens_1S, next_1[None]], dim=1)
        if next_1.item() == CharTokenizer.EOS:
            break
    return torch.cat(new) if new else prompt_ids_1S.new_empty(0)


def _answer(tokenizer: CharTokenizer, ids: Sequence[int]) -> str | None:
    """The decoded text before the first EOS; None if it holds an id outside the vocabulary (a wrong answer
    from a model whose vocabulary is larger than the tokenizer's, not a crash)."""
    if tokenizer.EOS in ids:
        ids = ids[: list(ids).index(tokenizer.EOS)]
    try:
        return tokenizer.decode(ids)
    except ValueError:
        return None


def exact_match(
    generate: Callable[[Tensor, int], Tensor],
    corpus: SyntheticCorpus,
    count_per_domain: int,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """Per-domain exact-match accuracy on the corpus's held-out examples. `generate(prompt_ids_1S, max_new_tokens)`
    gets BOS prompt SEP on the CPU and returns the generated ids (1D tensor, greedy); the answer is the decoded
    text up to the first EOS. max_new_tokens None gives each example its answer's length + 1 (the EOS): the
    score of unbounded generation (a longer output is wrong anyway) at the least cost; a fixed budget
    shorter than some answers would score them wrong whatever the model does."""
    if count_per_domain < 1:
        raise ValueError(f"count_per_domain must be at least 1, got {count_per_domain}")
    tok = corpus.tokenizer
    scores: dict[str, float] = {}
    for domain in corpus.domains:
        examples = corpus.eval_examples(domain, count_per_domain)
        right = 0
        for ex in examples:
            budget = max_new_tokens or len(tok.encode(ex.answer)) + 1
            right += _answer(tok, generate(prompt_ids(tok, ex.prompt), budget).tolist()) == ex.answer
        scores[domain] = right / len(examples)
    return scores
