"""A small jsonl corpus with injected exact and near copies, shared by the data filter's tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from moeops.datafilter.config import STAGES, FilterConfig
from moeops.datafilter.stages import run_stage, write_config, write_report

PROSE = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "in", "park", "we", "read", "book", "at", "home", "it",
         "is", "fine", "day", "and", "then"]  # fmt: skip
"""Words of the trusted reference's kind of text."""


def run_all_stages(config: FilterConfig, work: Path) -> dict[str, Any]:
    """Every stage's tasks in this process, one after another; the report."""
    write_config(work, config)
    for stage in STAGES:
        for task in range(config.stage_tasks(stage)):
            run_stage(work, stage, task)
    return write_report(work)


def random_text(rng: random.Random, words: int = 120) -> str:
    return " ".join(f"w{rng.randrange(3000)}" for _ in range(words))


def corpus(folder: Path) -> dict[str, str]:
    """Two files: 40 distinct documents, 6 exact copies (re-cased, re-spaced), 6 near copies (1 word of 120
    changed), a malformed line and a blank one. Returns id -> kind."""
    rng = random.Random(7)
    originals = [random_text(rng) for _ in range(40)]
    kinds: dict[str, str] = {}
    records = []
    for i, text in enumerate(originals):
        records.append({"id": f"o{i}", "text": text, "meta": i})
        kinds[f"o{i}"] = "original"
    for i in range(6):
        records.append({"id": f"e{i}", "text": "  " + originals[i].upper().replace(" ", "\n ")})
        kinds[f"e{i}"] = "exact"
        words = originals[10 + i].split()
        words[10] = "changed"  # inside the report snippet
        records.append({"id": f"n{i}", "text": " ".join(words)})
        kinds[f"n{i}"] = "near"
    folder.mkdir()
    lines = [json.dumps(r) for r in records]
    (folder / "a.jsonl").write_text("\n".join(lines[:30]) + "\n{broken\n\n")
    (folder / "b.jsonl").write_text("\n".join(lines[30:]))  # no newline at the end
    return kinds
