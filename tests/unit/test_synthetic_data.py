"""The synthetic corpus: exact answers per domain, deterministic batches, loss masks, and the exact-match eval."""

# Tensor names carry their shape (legend in moeops.model).

from __future__ import annotations

import itertools
import random
import re

import pytest
import torch

from moeops.api.v1alpha1.presets import Architecture
from moeops.data import (
    DOMAINS,
    CharTokenizer,
    Example,
    SyntheticCorpus,
    exact_match,
    greedy_generate,
    make_example,
    parse_source,
)
from moeops.data.synthetic import IGNORE_INDEX, MAX_EXAMPLE_TOKENS, SLOT_WORDS, TEMPLATES, prompt_ids
from moeops.model import Transformer

TOK = CharTokenizer()


def samples(domain: str, n: int = 500, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [make_example(domain, rng) for _ in range(n)]


def balanced_by_rewriting(text: str) -> bool:
    """An independent checker: delete innermost pairs until nothing changes."""
    while (shorter := re.sub(r"\(\)|\[\]|\{\}", "", text)) != text:
        text = shorter
    return text == ""


# -- the domains ---------------------------------------------------------------------------------------------


def test_arithmetic_answers_are_the_evaluated_expression() -> None:
    for ex in samples("arithmetic"):
        assert re.fullmatch(r"\d{1,3}[+-]\d{1,3}=", ex.prompt), ex
        assert int(ex.answer) == eval(ex.prompt[:-1]) >= 0  # only digits and one operator, checked above
    assert {"+" if "+" in ex.prompt else "-" for ex in samples("arithmetic")} == {"+", "-"}
    operand_lengths = {len(n) for ex in samples("arithmetic") for n in re.split(r"[+=-]", ex.prompt) if n}
    assert operand_lengths == {1, 2, 3}


def test_copy_and_reverse() -> None:
    for ex in samples("copy"):
        text = ex.prompt.removeprefix("copy:").removesuffix("|")
        assert ex.prompt == f"copy:{text}|" and ex.answer == text and 3 <= len(text) <= 12 and text.isalpha()
    for ex in samples("reverse"):
        text = ex.prompt.removeprefix("rev:").removesuffix("|")
        assert ex.answer == "".join(reversed(text)) and 3 <= len(text) <= 12
    assert make_example("reverse", random.Random(1)).answer != make_example("copy", random.Random(1)).answer


def test_brackets_labels_agree_with_an_independent_checker_and_are_roughly_balanced() -> None:
    examples = samples("brackets", 2000)
    for ex in examples:
        text = ex.prompt.removeprefix("bal:").removesuffix("|")
        assert set(text) <= set("()[]{}") and 1 <= len(text) <= 12
        assert ex.answer == ("yes" if balanced_by_rewriting(text) else "no"), ex
    yes = sum(ex.answer == "yes" for ex in examples) / len(examples)
    assert 0.4 < yes < 0.6
    assert {"(", "[", "{"} <= set("".join(ex.prompt for ex in examples))


def test_recall_answers_the_queried_key() -> None:
    for ex in samples("recall"):
        m = re.fullmatch(r"kv:((?:[a-z]=\d,)*[a-z]=\d);([a-z])\?", ex.prompt)
        assert m, ex
        pairs = dict(p.split("=") for p in m.group(1).split(","))
        assert len(pairs) == m.group(1).count(",") + 1  # keys are distinct
        assert ex.answer == pairs[m.group(2)]
    assert make_example("recall", random.Random(3)) == make_example("recall", random.Random(3))


def test_template_fills_its_slots() -> None:
    examples = samples("template", 3000)
    assert Example("template", "name:ada city:rome ->", "ada lives in rome") in examples
    for ex in examples:
        m = re.fullmatch(r"(\w+):(\w+) (\w+):(\w+) ->", ex.prompt)
        assert m, ex
        (sentence,) = [s for a, b, s in TEMPLATES if (a, b) == (m.group(1), m.group(3))]
        assert ex.answer == sentence.format(m.group(2), m.group(4))


def test_every_example_fits_its_token_bound_and_the_vocabulary() -> None:
    for domain in DOMAINS:
        longest = max(len(TOK.encode(ex.prompt + ex.answer)) + 3 for ex in samples(domain, 3000))
        assert longest <= MAX_EXAMPLE_TOKENS[domain], domain
    templates = [
        len(f"{a}:{x} {b}:{y} ->" + s.format(x, y)) + 3
        for a, b, s in TEMPLATES
        for x, y in itertools.product(SLOT_WORDS[a], SLOT_WORDS[b])
    ]
    assert max(templates) == MAX_EXAMPLE_TOKENS["template"]


def test_unknown_domain_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        make_example("poetry", random.Random(0))
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        SyntheticCorpus(["copy", "poetry"], seed=0, seq_len=64)


# -- tokenizer and source ------------------------------------------------------------------------------------


def test_tokenizer_round_trip_specials_and_errors() -> None:
    assert (TOK.PAD, TOK.BOS, TOK.EOS, TOK.SEP) == (0, 1, 2, 3) and TOK.vocab_size <= 128
    text = "name:ada city:rome -> kv:a=3,q=7;q? bal:(()[]{})| 37+485="
    ids = TOK.encode(text)
    assert min(ids) >= 4 and TOK.decode(ids) == text
    assert TOK.decode([TOK.BOS, *ids, TOK.SEP, TOK.EOS, TOK.PAD]) == text
    with pytest.raises(ValueError, match=r"character 'A' at position 3"):
        TOK.encode("abcA")
    with pytest.raises(ValueError, match="token id 999 is outside the vocabulary"):
        TOK.decode([5, 999])


def test_parse_source() -> None:
    assert parse_source("synthetic://arithmetic,copy") == ("arithmetic", "copy")
    assert parse_source("synthetic://all") == DOMAINS
    assert parse_source("synthetic://reverse") == ("reverse",)
    with pytest.raises(ValueError, match="unsupported data source 'hf://c4'"):
        parse_source("hf://c4")
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        parse_source("synthetic://copy,poetry")
    with pytest.raises(ValueError, match="unknown domain ''"):
        parse_source("synthetic://")
    with pytest.raises(ValueError, match="listed twice"):
        parse_source("synthetic://copy,copy")


# -- batches -------------------------------------------------------------------------------------------------


def test_batches_are_deterministic_and_stateless() -> None:
    corpus = SyntheticCorpus(DOMAINS, seed=7, seq_len=128)
    inputs_BS, targets_BS = corpus.batch(step=3, batch_size=4)
    assert inputs_BS.shape == targets_BS.shape == (4, 128)
    assert inputs_BS.dtype == targets_BS.dtype == torch.int64
    corpus.batch(step=4, batch_size=4)  # other calls in between change nothing
    fresh = SyntheticCorpus(list(DOMAINS), seed=7, seq_len=128)
    for again in (corpus.batch(3, 4), fresh.batch(3, 4)):
        assert torch.equal(again[0], inputs_BS) and torch.equal(again[1], targets_BS)
    assert not torch.equal(corpus.batch(4, 4)[0], inputs_BS)
    assert not torch.equal(SyntheticCorpus(DOMAINS, seed=8, seq_len=128).batch(3, 4)[0], inputs_BS)
    assert len(set(map(tuple, inputs_BS.tolist()))) == 4  # rows differ


def test_rank_slices_equal_the_rows_of_one_rank_with_the_whole_global_batch() -> None:
    corpus = SyntheticCorpus(DOMAINS, seed=1, seq_len=96)
    whole = corpus.batch(step=5, batch_size=6)
    for rank in range(2):
        part = corpus.batch(step=5, batch_size=3, rank=rank, world_size=2)
        for w, p in zip(whole, part, strict=True):
            assert torch.equal(w[rank * 3 : (rank + 1) * 3], p)
    with pytest.raises(ValueError, match="rank=2/2"):
        corpus.batch(step=0, batch_size=1, rank=2, world_size=2)


def packed(inputs: list[int], targets: list[int]) -> tuple[list[int], list[tuple[str, str]], int]:
    """The row's seq_len+1 tokens (the last one is the final target: an EOS, else PAD since examples are packed
    whole), its (prompt, answer) pairs, and where the padding starts."""
    tokens = [*inputs, targets[-1] if targets[-1] != IGNORE_INDEX else TOK.PAD]
    pairs, i = [], 0
    while i < len(tokens) and tokens[i] == TOK.BOS:
        sep = tokens.index(TOK.SEP, i)
        eos = tokens.index(TOK.EOS, sep)
        pairs.append((TOK.decode(tokens[i + 1 : sep]), TOK.decode(tokens[sep + 1 : eos])))
        i = eos + 1
    return tokens, pairs, i


def test_packing_and_loss_only_on_answers() -> None:
    corpus = SyntheticCorpus(DOMAINS, seed=3, seq_len=200)
    inputs_BS, targets_BS = corpus.batch(step=0, batch_size=8)
    for inputs, targets in zip(inputs_BS.tolist(), targets_BS.tolist(), strict=True):
        tokens, pairs, end = packed(inputs, targets)
        assert len(pairs) >= 3 and all(t == TOK.PAD for t in tokens[end:])
        assert end > 200 + 1 - max(MAX_EXAMPLE_TOKENS.values())  # packed until the next example didn't fit
        rebuilt: list[int] = []  # the expected targets, built from the pairs
        for prompt, answer in pairs:
            assert re.match(r"\d|copy:|rev:|bal:|kv:|\w+:\w+ ", prompt), prompt
            rebuilt += [IGNORE_INDEX] * (len(prompt) + 1) + [*TOK.encode(answer), TOK.EOS, IGNORE_INDEX]
        rebuilt = (rebuilt + [IGNORE_INDEX] * 200)[:200]  # then PAD, never predicted
        assert targets == rebuilt


def test_short_sequences_are_refused_and_minimal_ones_work() -> None:
    with pytest.raises(ValueError, match="seq_len 20 is too short"):
        SyntheticCorpus(["copy"], seed=0, seq_len=20)
    inputs_BS, _ = SyntheticCorpus(["arithmetic"], seed=0, seq_len=14).batch(0, 16)
    assert (inputs_BS[:, 0] == TOK.BOS).all()


def test_eval_examples_are_held_out_from_training() -> None:
    corpus = SyntheticCorpus(DOMAINS, seed=0, seq_len=256)
    held = {d: corpus.eval_examples(d, 50) for d in DOMAINS}
    assert held["copy"][:10] == corpus.eval_examples("copy", 10)
    assert held["copy"] != SyntheticCorpus(DOMAINS, seed=1, seq_len=256).eval_examples("copy", 50)
    held_prompts = {ex.prompt for exs in held.values() for ex in exs}
    assert all(corpus.is_held_out(ex) for exs in held.values() for ex in exs)
    trained = set()
    for step in range(8):
        inputs_BS, targets_BS = corpus.batch(step, 32)
        for inputs, targets in zip(inputs_BS.tolist(), targets_BS.tolist(), strict=True):
            trained |= {prompt for prompt, _ in packed(inputs, targets)[1]}
    assert len(trained) > 1000 and not trained & held_prompts
    # The domains with few distinct prompts still recur in training: held out by content, not only by stream.
    assert any(p.startswith("bal:") for p in trained) and any(p.startswith("name:") for p in trained)


# -- exact match and generation ------------------------------------------------------------------------------


def test_exact_match_scores_an_oracle_1_and_garbage_0() -> None:
    corpus = SyntheticCorpus(DOMAINS, seed=0, seq_len=64)
    answers = {
        tuple(prompt_ids(TOK, ex.prompt)[0].tolist()): ex.answer for d in DOMAINS for ex in corpus.eval_examples(d, 20)
    }

    def oracle(prompt_1S: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        return torch.tensor([*TOK.encode(answers[tuple(prompt_1S[0].tolist())]), TOK.EOS, *TOK.encode("junk")])

    def garbage(prompt_1S: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        return torch.tensor([TOK.encode("?")[0]] * max_new_tokens + [500])

    assert exact_match(oracle, corpus, 20) == dict.fromkeys(DOMAINS, 1.0)
    longest = max(len(ex.answer) for d in DOMAINS for ex in corpus.eval_examples(d, 20))
    assert longest > 16  # the budget follows the answer (a fixed 16 once scored long answers wrong)

    def exactly_the_budget(prompt_1S: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        answer = TOK.encode(answers[tuple(prompt_1S[0].tolist())])
        return torch.tensor([*answer, TOK.EOS][:max_new_tokens])

    assert exact_match(exactly_the_budget, corpus, 20) == dict.fromkeys(DOMAINS, 1.0)
    assert exact_match(garbage, corpus, 20) == dict.fromkeys(DOMAINS, 0.0)


def test_greedy_generate_with_a_tiny_transformer() -> None:
    torch.manual_seed(0)
    arch = Architecture(
        layers=1, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=16, vocab_size=TOK.vocab_size, seq_len=64
    )
    model = Transformer(arch).eval()
    prompt_1S = prompt_ids(TOK, "37+485=")
    out = greedy_generate(model, prompt_1S, max_new_tokens=5)
    assert out.dim() == 1 and 1 <= len(out) <= 5 and out.dtype == torch.int64
    assert (out[:-1] != TOK.EOS).all()
    # Greedy: each token is the argmax given the prompt and the tokens before it.
    tokens_1S = torch.cat([prompt_1S, out[None]], dim=1)
    with torch.no_grad():
        logits_1SV = model(tokens_1S).logits_BSV
    assert torch.equal(logits_1SV[0, prompt_1S.shape[1] - 1 : -1].argmax(-1), out)
    # Longer than the model's position table: `context` keeps the input inside it.
    long_1S = torch.cat([prompt_1S] * 8, dim=1)[:, :63]
    assert len(greedy_generate(model, long_1S, max_new_tokens=4, context=64)) <= 4
    scores = exact_match(lambda p, n: greedy_generate(model, p, n), SyntheticCorpus(DOMAINS, 0, 64), 2)
    assert set(scores) == set(DOMAINS) and all(0.0 <= s <= 1.0 for s in scores.values())
