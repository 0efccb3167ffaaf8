"""Level-1 dedup of the data filter (moeops.datafilter) against datasketch's MinHash + MinHashLSH, on one generated
corpus with injected exact copies (re-cased, re-spaced) and near copies (word edits at known rates).

Both run in this process on one core, from the same jsonl file to the survivors, with the same normalisation,
exact hash and MinHash shape (word 5-grams, 14 bands x 8 rows = 112 permutations): ours as its four stages with
one task (moeops.datafilter.stages), datasketch as its usual streaming recipe (query the LSH; a hit is a
duplicate, else insert). Printed: near-dup recall per edit rate, precision, MB/s per core, memory (tracemalloc,
in later passes: the peak, and its growth from half the corpus to all of it per million documents), ratios
ours / datasketch; then `moeops data filter`'s wall and stage times with 1, 2 and 4 task processes.

    .venv/bin/python benchmarks/datafilter_dedup.py --documents 20000
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from moeops.datafilter.config import STAGES, plan
from moeops.datafilter.local import filter_corpus
from moeops.datafilter.normalise import exact_hash, normalise
from moeops.datafilter.reader import parse_text
from moeops.datafilter.stages import run_stage, write_config

EDIT_RATES = (0.01, 0.03, 0.06)
SHINGLE, BANDS, ROWS = 5, 14, 8


def _edit(words: list[str], rate: float, rng: random.Random, vocab: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        if rng.random() >= rate:
            out.append(word)
            continue
        op = rng.randrange(3)  # substitute, delete, insert
        if op == 0:
            out.append(rng.choice(vocab))
        elif op == 2:
            out.extend([word, rng.choice(vocab)])
    return out


def make_corpus(path: Path, originals: int, seed: int = 0) -> dict[str, int]:
    """Originals (Zipfian words, 80-300 each), 5% exact and 15% near copies (a third per edit rate), each placed
    at a random point after its original. Writes {"id", "kind", "text"} lines; returns counts by kind."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(30000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    words = [rng.choices(vocab, weights, k=rng.randint(80, 300)) for _ in range(originals)]
    placed = [(float(i), f"o{i}", "original", " ".join(w)) for i, w in enumerate(words)]
    for i in rng.sample(range(originals), originals // 20):
        placed.append((rng.uniform(i + 0.5, originals), f"e{i}", "exact", "  ".join(words[i]).upper()))
    for n, i in enumerate(rng.sample(range(originals), 3 * originals // 20)):
        rate = EDIT_RATES[n % len(EDIT_RATES)]
        text = " ".join(_edit(words[i], rate, rng, vocab))
        placed.append((rng.uniform(i + 0.5, originals), f"n{i}", f"near@{rate}", text))
    placed.sort()
    counts: dict[str, int] = {}
    with path.open("w") as out:
        for _, doc_id, kind, text in placed:
            out.write(json.dumps({"id": doc_id, "kind": kind, "text": text}) + "\n")
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def shingles(normalised: str) -> list[bytes]:
    """Word 5-grams as datasketch hashes them (bytes); a shorter document is one shingle, as in ours."""
    words = normalised.split(" ")
    width = min(SHINGLE, len(words))
    return list({" ".join(words[k : k + width]).encode() for k in range(len(words) - width + 1)})


def run_datasketch(corpus: Path, output: Path) -> set[str]:
    """The streaming recipe: exact hash first, then query-or-insert in a MinHashLSH. Returns the kept ids."""
    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    seen: set[int] = set()
    kept: set[str] = set()
    with corpus.open("rb") as lines, output.open("wb") as out:
        for n, raw in enumerate(lines):
            text = normalise(parse_text(raw, "text"))
            digest = exact_hash(text)
            if digest in seen:
                continue
            seen.add(digest)
            signature = MinHash(num_perm=BANDS * ROWS, seed=1)
            signature.update_batch(shingles(text))
            if lsh.query(signature):
                continue
            lsh.insert(n, signature)
            out.write(raw)
            kept.add(json.loads(raw)["id"])
    return kept


def run_ours(corpus: Path, output: Path) -> set[str]:
    """The four stages, one task each, in this process. Returns the kept ids."""
    config = plan([str(corpus)], [corpus.stat().st_size], 1, str(output), shingle=SHINGLE, bands=BANDS, rows=ROWS)
    work = output / ".work"
    write_config(work, config)
    for stage in STAGES:
        run_stage(work, stage, 0)
    return {json.loads(line)["id"] for line in (output / "part-00000.jsonl").open("rb")}


def score(kept: set[str], corpus: Path) -> dict[str, float]:
    """Recall per kind of copy (removed / injected), precision (removed copies / removed)."""
    kinds: dict[str, list[int]] = {}
    for line in corpus.open("rb"):
        record = json.loads(line)
        counts = kinds.setdefault(record["kind"], [0, 0])
        counts[0] += 1
        counts[1] += record["id"] not in kept
    removed = sum(removed for _, removed in kinds.values())
    wrongly = kinds.get("original", [0, 0])[1]
    result = {
        f"recall {kind}": removed / total for kind, (total, removed) in sorted(kinds.items()) if kind != "original"
    }
    near = [counts for kind, counts in kinds.items() if kind.startswith("near")]
    result["recall near (all)"] = sum(r for _, r in near) / max(1, sum(t for t, _ in near))
    result["precision"] = (removed - wrongly) / max(1, removed)
    return result


def traced_peak_b(run: Callable[[Path, Path], set[str]], corpus: Path, output: Path) -> int:
    tracemalloc.start()
    run(corpus, output)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def measure(run: Callable[[Path, Path], set[str]], corpus: Path, half: Path, folder: Path) -> dict[str, float]:
    """Quality and speed on the corpus; memory as the peak (tracemalloc) and as its growth per document between
    the first half of the corpus and all of it (what a million more documents cost, without the fixed part)."""
    folder.mkdir()
    started = time.perf_counter()
    kept = run(corpus, folder / "timed")
    seconds = time.perf_counter() - started
    documents = sum(1 for _ in corpus.open("rb"))
    peak = traced_peak_b(run, corpus, folder / "traced")
    growth = (peak - traced_peak_b(run, half, folder / "traced-half")) / (documents - documents // 2)
    return {
        **score(kept, corpus),
        "seconds": seconds,
        "MB/s per core": corpus.stat().st_size / 1e6 / seconds,
        "peak MiB": peak / 2**20,
        "MiB per million documents": growth * 1e6 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20000, help="originals (copies add 20%%)")
    parser.add_argument("--tasks", type=int, nargs="*", default=[1, 2, 4], help="task counts for the stage timings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        counts = make_corpus(corpus, args.documents)
        print(f"corpus: {corpus.stat().st_size / 1e6:.1f} MB, {sum(counts.values())} documents {counts}")
        half = folder / "half.jsonl"
        lines = corpus.read_bytes().splitlines(keepends=True)
        half.write_bytes(b"".join(lines[: len(lines) // 2]))
        ours = measure(run_ours, corpus, half, folder / "ours")
        theirs = measure(run_datasketch, corpus, half, folder / "datasketch")
        print(f"{'':28} {'moeops':>10} {'datasketch':>11} {'ratio':>7}")
        for key in ours:
            ratio = ours[key] / theirs[key] if theirs[key] else float("nan")
            print(f"{key:28} {ours[key]:10.3f} {theirs[key]:11.3f} {ratio:7.2f}")
        for tasks in args.tasks:
            started = time.perf_counter()
            report = filter_corpus(corpus, folder / f"local-{tasks}", tasks)
            seconds = time.perf_counter() - started
            stages = ", ".join(f"{stage} {s:.2f}" for stage, s in report["stage_seconds"].items())
            print(
                f"moeops data filter --tasks {tasks}: {seconds:.2f} s, {corpus.stat().st_size / 1e6 / seconds:.2f}"
                f" MB/s ({stages} s); kept {report['kept']}"
            )


if __name__ == "__main__":
    main()
