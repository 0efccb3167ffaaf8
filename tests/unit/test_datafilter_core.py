"""The data filter's pure core: normalisation, MinHash, LSH buckets, union-find and removal reasons, byte ranges."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeops.datafilter.buckets import bucket_pairs, doc_id, doc_ids, split_id
from moeops.datafilter.clusters import EXACT, NEAR, UnionFind, removals, unique_pairs
from moeops.datafilter.minhash import (
    MinHashParams,
    band_keys,
    permutation_coefficients,
    shingle_hashes,
    signatures,
    signatures_of,
)
from moeops.datafilter.normalise import exact_hash, normalise
from moeops.datafilter.quality import ByteNgramModel
from moeops.datafilter.ranges import split_ranges
from moeops.datafilter.shingles import batch_shingles, word_hashes


def test_normalise_folds_width_case_and_spaces():
    assert normalise("  Ｈｅｌｌｏ\tWORLD\n\n ﬁne ") == "hello world fine"
    assert exact_hash(normalise("A  b")) == exact_hash(normalise("a b"))
    assert exact_hash("a b") != exact_hash("a c")


def test_exact_hash_is_the_same_in_every_process():
    # blake2b, not hash(): PYTHONHASHSEED must not change which documents are duplicates.
    import hashlib

    want = int.from_bytes(hashlib.blake2b(b"same text", digest_size=8).digest(), "little")
    assert exact_hash("same text") == want


def test_short_documents_are_one_shingle_and_shingles_are_distinct():
    assert len(shingle_hashes("one two", 5)) == 1
    assert len(shingle_hashes("a b a b a b", 2)) == 2  # "a b" and "b a"
    assert shingle_hashes("x y z", 1).dtype == np.uint64
    assert (shingle_hashes("x y z w", 2) < 2**32).all()


def test_word_hashes_depend_on_the_word_only():
    hashes, ends = word_hashes(b"ab cd ab abc b a")
    assert hashes[0] == hashes[2] and len(set(hashes.tolist())) == 5
    assert ends.tolist() == [2, 5, 8, 12, 14, 16]


def test_a_batch_shingles_each_document_as_alone():
    docs = ["a b c d e f", "a b", "x y z a b c d e f a", "é ü 日本 語 テキスト"]
    hashes, starts = batch_shingles(docs, 3)
    assert starts.tolist() == [0, 4, 5, 13]
    runs = np.split(hashes, starts[1:])
    for doc, run in zip(docs, runs, strict=True):
        assert (run == shingle_hashes(doc, 3)).all()
    assert set(runs[0].tolist()) < set(runs[2].tolist())  # "a b c" .. "d e f" are in both
    assert len(runs[1]) == 1  # shorter than one n-gram


def _jaccard(a: str, b: str, n: int) -> float:
    grams_a = {tuple(a.split()[i : i + n]) for i in range(len(a.split()) - n + 1)}
    grams_b = {tuple(b.split()[i : i + n]) for i in range(len(b.split()) - n + 1)}
    return len(grams_a & grams_b) / len(grams_a | grams_b)


def test_signature_agreement_estimates_jaccard():
    params = MinHashParams(shingle=3, bands=32, rows=8)
    a_coef, b_coef = permutation_coefficients(params)
    rng = random.Random(3)
    base = [f"w{rng.randrange(5000)}" for _ in range(400)]
    edited = list(base)
    for position in rng.sample(range(400), 40):
        edited[position] = "edit"
    one, two = " ".join(base), " ".join(edited)
    sig = signatures(*batch_shingles([one, two], 3), a_coef, b_coef)
    estimate = float((sig[0] == sig[1]).mean())
    assert abs(estimate - _jaccard(one, two, 3)) < 0.1


def test_batched_signatures_equal_one_at_a_time_and_long_documents_are_chunked(monkeypatch):
    import moeops.datafilter.minhash as minhash

    params = MinHashParams()
    a_coef, b_coef = permutation_coefficients(params)
    docs = [shingle_hashes(" ".join(f"w{i * j}" for i in range(n)), 5) for j, n in enumerate([3, 50, 700, 9], 1)]
    together = signatures_of(docs, a_coef, b_coef)
    apart = np.concatenate([signatures_of([d], a_coef, b_coef) for d in docs])
    monkeypatch.setattr(minhash, "_MAX_CELLS", 200 * params.permutations)  # the 700-word document is chunked
    chunked = signatures_of(docs, a_coef, b_coef)
    assert (together == apart).all() and (together == chunked).all()


def test_identical_signatures_share_every_band_and_a_changed_value_changes_its_band_only():
    params = MinHashParams(bands=4, rows=3)
    signature = np.arange(12, dtype=np.uint64).reshape(1, 12)
    changed = signature.copy()
    changed[0, 4] = 99
    keys = band_keys(np.concatenate([signature, signature, changed]), params)
    assert (keys[0] == keys[1]).all()
    assert [bool(k) for k in keys[0] == keys[2]] == [True, False, True, True]
    with pytest.raises(ValueError, match="12 values"):
        band_keys(signature, MinHashParams(bands=2, rows=2))


def test_bucket_pairs_join_each_bucket_to_its_first_document():
    keys = np.array([7, 3, 7, 7, 5, 3], dtype=np.uint64)
    docs = np.array([4, 9, 2, 8, 1, 6], dtype=np.uint64)
    assert sorted(map(tuple, bucket_pairs(keys, docs).tolist())) == [(2, 4), (2, 8), (6, 9)]
    assert bucket_pairs(np.empty(0, np.uint64), np.empty(0, np.uint64)).shape == (0, 2)


def test_doc_ids_order_by_task_then_ordinal():
    assert split_id(doc_id(3, 17)) == (3, 17)
    assert doc_ids(2, 3).tolist() == [doc_id(2, 0), doc_id(2, 1), doc_id(2, 2)]
    assert doc_id(0, 2**32 - 1) < doc_id(1, 0)
    with pytest.raises(ValueError):
        doc_id(0, 2**32)


def test_union_find_roots_are_the_smallest_member():
    sets = UnionFind()
    sets.union(5, 9)
    sets.union(9, 2)
    sets.union(7, 8)
    assert [sets.find(x) for x in (2, 5, 9, 7, 8, 4)] == [2, 2, 2, 7, 7, 4]


def test_removals_say_exact_or_near_and_keep_the_first_document():
    exact = np.array([[1, 4], [4, 6]], dtype=np.uint64)
    near = np.array([[4, 3], [3, 8], [8, 3]], dtype=np.uint64)
    got = {r.doc: (r.reason, r.duplicate_of) for r in removals(exact, near)}
    # 1, 4, 6 are one text (1 first); 4 is near 3, so 1's cluster joins 3 and 8; 1 survives.
    assert got == {4: (EXACT, 1), 6: (EXACT, 1), 3: (NEAR, 1), 8: (NEAR, 1)}
    assert unique_pairs(np.array([[2, 1], [1, 2], [3, 3]], dtype=np.uint64)).tolist() == [[1, 2]]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.sampled_from(["a b c", "A  b c", "x y", "x y z", "q", "Q "]), min_size=1, max_size=40),
    near=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39)), max_size=30),
)
def test_exact_dups_always_go_and_nothing_goes_without_a_reason(texts, near):
    """Whatever the near pairs LSH proposes: of each normalised text only one copy survives, and every removed
    document names an earlier document of its cluster that survives or was itself removed with a reason."""
    docs = np.arange(len(texts), dtype=np.uint64)
    hashes = np.array([exact_hash(normalise(t)) for t in texts], dtype=np.uint64)
    near_pairs = np.array([(a, b) for a, b in near if a < len(texts) and b < len(texts)], dtype=np.uint64)
    found = removals(bucket_pairs(hashes, docs), near_pairs.reshape(-1, 2))
    removed = {r.doc: r for r in found}
    survivors = [d for d in range(len(texts)) if d not in removed]
    assert len({normalise(texts[d]) for d in survivors}) == len(survivors)
    for removal in found:
        assert removal.reason in (EXACT, NEAR)
        assert removal.duplicate_of < removal.doc
        if removal.reason == EXACT:
            assert normalise(texts[removal.duplicate_of]) == normalise(texts[removal.doc])
    assert len(survivors) + len(found) == len(texts)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 500), min_size=1, max_size=6), tasks=st.integers(1, 9))
def test_byte_ranges_cover_every_byte_once(sizes, tasks):
    shards = split_ranges(sizes, tasks)
    assert len(shards) == tasks
    covered = [0] * sum(sizes)
    offsets = np.cumsum([0, *sizes]).tolist()
    for shard in shards:
        for part in shard:
            assert 0 <= part.start < part.end <= sizes[part.file]
            for byte in range(offsets[part.file] + part.start, offsets[part.file] + part.end):
                covered[byte] += 1
    assert all(count == 1 for count in covered)


def test_the_quality_model_scores_text_like_its_reference_low_and_garbage_high():
    rng = random.Random(5)
    sentences = ["the cat sat on the mat", "a dog ran in the park", "we read the book at home", "it is a fine day"]
    reference = [" ".join(rng.choice(sentences) for _ in range(20)) for _ in range(50)]
    model = ByteNgramModel.train(reference, order=4)
    prose = model.perplexity("the dog sat in the park and we read a fine book")
    garbage = model.perplexity("".join(rng.choice("qxzjv#@%$0123456789") for _ in range(60)))
    assert prose < 15 and garbage > 150  # unseen contexts score about 256 (uniform over bytes)
    assert model.perplexity("ab") == 1.0  # shorter than the order: nothing to score
    with pytest.raises(ValueError, match="no text"):
        ByteNgramModel.train(["abc"], order=4)
