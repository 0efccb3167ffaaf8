"""Text corpora: reading text/jsonl sources, the offline BPE tokenizer, packing and deterministic batches."""

# Tensor names carry their shape (legend in moeops.model).

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pytest
import torch

from moeops.data import (
    EOD_TOKEN,
    BpeTokenizer,
    TextCorpus,
    check_vocab,
    load_text_corpus,
    read_documents,
    train_bpe,
    train_tokenizer,
)
from moeops.data.bpe import MIN_VOCAB_SIZE
from moeops.data.synthetic import IGNORE_INDEX

WORDS = ("the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "big", "small", "red", "blue", "and")
SEQ_LEN = 16


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + "." for _ in range(count)]


DOCS = sentences(200)


@pytest.fixture(scope="module")
def tokenizer() -> BpeTokenizer:
    return train_bpe(DOCS, 300)


@pytest.fixture(scope="module")
def corpus(tokenizer: BpeTokenizer) -> TextCorpus:
    return TextCorpus.from_documents(DOCS, tokenizer, SEQ_LEN, seed=7)


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def uri(path: Path) -> str:
    return f"file://{path}"


# -- the tokenizer -------------------------------------------------------------------------------------------


def test_tokenizer_train_save_load_round_trip(tmp_path: Path) -> None:
    text_file = tmp_path / "train.txt"
    text_file.write_text("\n\n".join(DOCS))
    trained = train_tokenizer([text_file], 300, tmp_path / "out" / "tokenizer.json")
    loaded = BpeTokenizer.load(tmp_path / "out" / "tokenizer.json")
    assert loaded.to_json() == trained.to_json()
    assert (loaded.pad_id, loaded.eod_id) == (0, 1)
    assert MIN_VOCAB_SIZE < loaded.vocab_size <= 300  # merges were learned
    for text in [DOCS[0], "  leading and trailing spaces \n\ttabs\r\n", "unseen: héllo wörld 漢字 🙂", ""]:
        ids = loaded.encode(text)
        assert ids == trained.encode(text) and all(0 <= i < loaded.vocab_size for i in ids)
        assert loaded.decode(ids) == text
    assert len(loaded.encode(DOCS[0])) < len(DOCS[0].encode()) / 2  # BPE compresses what it was trained on
    assert loaded.decode([*loaded.encode("a cat"), loaded.eod_id], skip_special_tokens=False) == "a cat" + EOD_TOKEN
    with pytest.raises(ValueError, match="outside the vocabulary"):
        loaded.decode([loaded.vocab_size])


def test_tokenizer_training_is_deterministic(tokenizer: BpeTokenizer) -> None:
    assert train_bpe(DOCS, 300).to_json() == tokenizer.to_json()
    assert train_bpe(DOCS, 280).to_json() != tokenizer.to_json()


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_VOCAB_SIZE}"):
        train_bpe(DOCS, 100)
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=f"tokenizer file {re.escape(str(missing))} does not exist"):
        BpeTokenizer.load(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not a tokenizer")
    with pytest.raises(ValueError, match=f"{re.escape(str(garbage))} is not a readable tokenizer.json"):
        BpeTokenizer.load(garbage)
    no_eod = tmp_path / "no_eod.json"
    no_eod.write_text(train_bpe(DOCS, 300).to_json().replace(EOD_TOKEN, "<|other|>"))
    with pytest.raises(ValueError, match=f"tokenizer {re.escape(str(no_eod))} has no end-of-document token"):
        BpeTokenizer.load(no_eod)


def test_check_vocab() -> None:
    check_vocab(300, 300)
    check_vocab(300, 512)
    with pytest.raises(ValueError, match="tokenizer has 513 tokens but the model's vocab_size is 512"):
        check_vocab(513, 512)


# -- reading documents ---------------------------------------------------------------------------------------


def test_text_documents_are_separated_by_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("\n\nfirst line\nsame doc\n\n \t\n\nsecond\r\n\r\nthird\n\n\n")
    (tmp_path / "a.txt").write_text("one whole file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("nested")
    (tmp_path / "notes.md").write_text("not a .txt file")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.txt").write_text("hidden")
    docs = read_documents(uri(tmp_path), "text")
    assert docs.texts == ["one whole file", "first line\nsame doc", "second", "third", "nested"]
    assert docs.files == 3
    assert read_documents(uri(tmp_path / "notes.md"), "text").texts == ["not a .txt file"]  # a file: any name


def test_jsonl_malformed_lines_are_counted_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data.jsonl"
    lines = [
        b'{"text": "good one"}',
        b"not json",
        b"[1, 2]",
        b'{"body": "wrong field"}',
        b'{"text": 5}',
        b'{"text": "\xff broken utf-8"}',
        b"",
        b'{"text": "  "}',  # empty text: skipped, not malformed
        b'{"text": "good two", "id": 2}',
    ]
    path.write_bytes(b"\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="moeops.data"):
        docs = read_documents(uri(path), "jsonl")
    assert docs.texts == ["good one", "good two"]
    assert docs.malformed_lines == 5
    assert docs.malformed_examples[0] == f"{path}:2: not JSON (Expecting value at column 1)"
    assert [e.split(": ", 1)[0] for e in docs.malformed_examples] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "a JSON list, not an object" in docs.malformed_examples[1]
    assert "no 'text' field" in docs.malformed_examples[2]
    assert "is a int, not a string" in docs.malformed_examples[3]
    assert "not UTF-8" in docs.malformed_examples[4]
    assert "skipped 5 malformed jsonl lines" in caplog.text
    assert read_documents(uri(path), "jsonl", text_field="body").texts == ["wrong field"]


@pytest.mark.parametrize(
    ("source", "fmt", "message"),
    [
        ("file://{tmp}/missing", "text", "data path {tmp}/missing does not exist"),
        ("file://{tmp}/empty_dir", "text", r"data directory {tmp}/empty_dir holds no \.txt files"),
        ("file://{tmp}/blank.txt", "text", r"no documents in {tmp}/blank.txt \(format 'text'\): there is no non-blank"),
        ("file://{tmp}/bad.jsonl", "jsonl", "all 2 non-blank lines are malformed, first: {tmp}/bad.jsonl:1: not JSON"),
        ("file://{tmp}/blank.txt", "parquet", "unknown data format 'parquet'.*the API accepts jsonl, text"),
        ("file://{tmp}/blank.txt", "tokens", "unknown data format 'tokens'"),
        ("file://{tmp}/blank.txt", "csv", "unknown data format 'csv'"),
        ("s3://bucket/corpus", "text", "reads only file:// and pvc:// sources, got 's3://bucket/corpus'"),
        (
            "file://data/corpus",
            "text",
            "names the host 'data'; a local path needs three slashes: 'file:///data/corpus'",
        ),
    ],
)
def test_read_errors_name_the_problem(tmp_path: Path, source: str, fmt: str, message: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "bad.jsonl").write_text("oops\n{]\n")
    with pytest.raises(ValueError, match=message.format(tmp=re.escape(str(tmp_path)))):
        read_documents(source.format(tmp=tmp_path), fmt)


def test_not_utf8_text_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}/latin1.txt is not UTF-8 text")):
        read_documents(uri(tmp_path), "text")


# -- packing and batches -------------------------------------------------------------------------------------


def test_stream_is_the_documents_each_followed_by_eod(corpus: TextCorpus, tokenizer: BpeTokenizer) -> None:
    assert tokenizer.decode(corpus.stream.tolist(), skip_special_tokens=False) == "".join(d + EOD_TOKEN for d in DOCS)
    assert corpus.vocab_size == tokenizer.vocab_size and int(corpus.stream.max()) < corpus.vocab_size
    assert corpus.windows == -(-(len(corpus.stream) - 1) // SEQ_LEN)


def test_targets_are_the_inputs_shifted_by_one(corpus: TextCorpus) -> None:
    inputs_BS, targets_BS = corpus.batch(step=3, batch_size=8)
    assert inputs_BS.shape == targets_BS.shape == (8, SEQ_LEN)
    assert inputs_BS.dtype == targets_BS.dtype == torch.int64
    for row in range(8):
        start = corpus.window_of(3 * 8 + row) * SEQ_LEN
        window = corpus.stream[start : start + SEQ_LEN + 1].long()
        assert torch.equal(inputs_BS[row, : len(window) - 1], window[:-1])
        assert torch.equal(targets_BS[row, : len(window) - 1], window[1:])
        assert (targets_BS[row, len(window) - 1 :] == IGNORE_INDEX).all()  # only padding is ignored
    counted = targets_BS[:, :-1] != IGNORE_INDEX
    assert torch.equal(inputs_BS[:, 1:][counted], targets_BS[:, :-1][counted])  # target t is input t+1


def test_batches_are_a_pure_function_of_seed_step_and_row(corpus: TextCorpus, tokenizer: BpeTokenizer) -> None:
    fresh = TextCorpus.from_documents(DOCS, tokenizer, SEQ_LEN, seed=7)
    for step in (5, 0, 123):  # any order: no state carried between calls
        assert all(torch.equal(a, b) for a, b in zip(corpus.batch(step, 4), fresh.batch(step, 4), strict=True))
    global_inputs, global_targets = corpus.batch(step=9, batch_size=8)
    for world_size in (2, 4, 8):
        shares = [corpus.batch(9, 8 // world_size, rank, world_size) for rank in range(world_size)]
        assert torch.equal(torch.cat([inputs for inputs, _ in shares]), global_inputs)
        assert torch.equal(torch.cat([targets for _, targets in shares]), global_targets)
    other_seed = TextCorpus.from_documents(DOCS, tokenizer, SEQ_LEN, seed=8)
    assert not torch.equal(other_seed.batch(9, 8)[0], global_inputs)


def test_each_epoch_sees_every_window_once_in_a_new_order(corpus: TextCorpus) -> None:
    n = corpus.windows
    epochs = [[corpus.window_of(e * n + i) for i in range(n)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert epochs[0] != epochs[1] != epochs[2]
    # A global batch as large as the corpus: every step is exactly one epoch, padding included once.
    padded_tokens = n * SEQ_LEN + 1 - len(corpus.stream)
    for step in (0, 1):
        inputs_BS, targets_BS = corpus.batch(step, batch_size=n)
        assert sorted(inputs_BS[:, 0].tolist()) == sorted(corpus.stream[: n * SEQ_LEN : SEQ_LEN].tolist())
        assert int((targets_BS == IGNORE_INDEX).sum()) == padded_tokens


def test_a_corpus_shorter_than_one_window_is_padded(tokenizer: BpeTokenizer) -> None:
    tiny = TextCorpus.from_documents(["a cat"], tokenizer, seq_len=64, seed=0)
    inputs_BS, targets_BS = tiny.batch(0, 2)
    real = len(tiny.stream)
    assert tiny.windows == 1 and torch.equal(inputs_BS[0], inputs_BS[1])
    assert torch.equal(targets_BS[0, : real - 1], tiny.stream[1:].long())
    assert (targets_BS[0, real - 1 :] == IGNORE_INDEX).all()
    assert (inputs_BS[0, real:] == tokenizer.pad_id).all()


def test_bad_batch_requests_are_rejected(corpus: TextCorpus) -> None:
    for step, batch_size, rank, world_size in [(-1, 1, 0, 1), (0, 0, 0, 1), (0, 1, 2, 2)]:
        with pytest.raises(ValueError, match="bad batch request"):
            corpus.batch(step, batch_size, rank, world_size)


# -- load_text_corpus ----------------------------------------------------------------------------------------


def test_load_text_corpus_trains_or_loads_the_tokenizer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "part-0.jsonl", [{"text": d} for d in DOCS[:100]])
    write_jsonl(data / "part-1.jsonl", [{"text": d} for d in DOCS[100:]])
    cache = tmp_path / "cache"
    trained = load_text_corpus(uri(data), "jsonl", SEQ_LEN, 1, tokenizer_path=None, vocab_size=300, cache_dir=cache)
    assert trained.document_count == len(DOCS) and trained.vocab_size <= 300
    trained.tokenizer.save(tmp_path / "tokenizer.json")
    tokenizer_path = str(tmp_path / "tokenizer.json")
    loaded = load_text_corpus(uri(data), "jsonl", SEQ_LEN, seed=1, tokenizer_path=tokenizer_path, cache_dir=cache)
    assert all(torch.equal(a, b) for a, b in zip(trained.batch(2, 4), loaded.batch(2, 4), strict=True))
    with pytest.raises(ValueError, match=r"the tokenizer has .* tokens but the model's vocab_size is 270"):
        load_text_corpus(uri(data), "jsonl", SEQ_LEN, 1, str(tmp_path / "tokenizer.json"), vocab_size=270)
    with pytest.raises(ValueError, match="too small for a byte-level tokenizer"):
        load_text_corpus(uri(data), "jsonl", SEQ_LEN, 1, None, vocab_size=64)
