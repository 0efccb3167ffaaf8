"""Loading a text corpus: wall time and peak memory of `load_text_corpus` on a generated JSONL corpus, first build
(stream, tokenize, write the token file) and reuse (map the file), each in a fresh process, against the bare
process (torch and tokenizers imported, tokenizer loaded).

    .venv/bin/python benchmarks/text_corpus_load.py --documents 200000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = """
import json, resource, sys, time
from moeops.data.bpe import BpeTokenizer
from moeops.data.text import load_text_corpus
folder, load = sys.argv[1], sys.argv[2] == "load"
BpeTokenizer.load(f"{folder}/tokenizer.json")
started = time.perf_counter()
corpus = load_text_corpus(f"file://{folder}/corpus.jsonl", "jsonl", 256, 0, f"{folder}/tokenizer.json",
                          cache_dir=__import__("pathlib").Path(folder, "cache")) if load else None
print(json.dumps({"seconds": time.perf_counter() - started,
                  "tokens": len(corpus.stream) if corpus else 0,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_corpus(folder: Path, documents: int) -> None:
    from moeops.data.bpe import train_bpe

    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)] + ["the", "of", "and", "to", "a", "in", "is", "it", "that", "was"] * 200
    with (folder / "corpus.jsonl").open("w") as out:
        for _ in range(documents):
            out.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 60)))}) + "\n")
    with (folder / "corpus.jsonl").open() as lines:
        sample = [json.loads(line)["text"] for _, line in zip(range(5000), lines, strict=False)]
    train_bpe(sample, 4096).save(folder / "tokenizer.json")


def measure(folder: Path, load: bool) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(folder), "load" if load else "bare"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_corpus(folder, args.documents)
        size = (folder / "corpus.jsonl").stat().st_size
        bare = measure(folder, load=False)
        print(f"corpus: {args.documents} documents, {size / 2**20:.1f} MiB of JSONL")
        print(f"bare process: max RSS {bare['max_rss_mib']:.0f} MiB")
        for what in ("first build", "reuse"):
            run = measure(folder, load=True)
            extra = run["max_rss_mib"] - bare["max_rss_mib"]
            print(f"{what}: {run['seconds']:.1f} s, {run['tokens']:.0f} tokens, max RSS +{extra:.0f} MiB over bare")


if __name__ == "__main__":
    main()
