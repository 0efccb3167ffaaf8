"""The filter's stages run in this process over a real work folder: what the shards hold, what the report says."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from datafilter_corpus import PROSE, run_all_stages
from datafilter_corpus import corpus as _corpus
from moeops.datafilter.config import plan
from moeops.datafilter.reader import ReadStats, read_shard
from moeops.datafilter.stages import load_config, run_stage, write_config


def _run(tmp_path: Path, tasks: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _corpus(tmp_path / "in")
    files = sorted((tmp_path / "in").glob("*.jsonl"))
    config = plan([str(f) for f in files], [f.stat().st_size for f in files], tasks, str(tmp_path / "out"))
    report = run_all_stages(config, tmp_path / "work")
    kept = [json.loads(line) for shard in report["shards"] for line in Path(shard).read_text().splitlines()]
    return report, kept


@pytest.mark.parametrize("tasks", [1, 3, 7])
def test_every_line_is_read_by_exactly_one_task(tmp_path, tasks):
    _corpus(tmp_path / "in")
    files = sorted((tmp_path / "in").glob("*.jsonl"))
    config = plan([str(f) for f in files], [f.stat().st_size for f in files], tasks, str(tmp_path / "out"))
    stats = ReadStats()
    ids = [json.loads(line.raw)["id"] for task in range(tasks) for line in read_shard(config, task, stats)]
    assert len(ids) == len(set(ids)) == 52
    assert stats.malformed == 1 and stats.documents == 52


@pytest.mark.parametrize("tasks", [1, 3])
def test_level1_removes_the_injected_copies_and_keeps_the_originals(tmp_path, tasks):
    report, kept = _run(tmp_path, tasks)
    assert sorted(r["id"] for r in kept) == sorted(f"o{i}" for i in range(40))
    assert [r["meta"] for r in kept] == list(range(40))  # whole records, in reading order
    dedup = report["level1"]["dedup"]
    assert (dedup["exact"], dedup["near"], report["kept"]) == (6, 6, 40)
    assert report["level1"]["quality"] is None
    assert report["input"]["documents"] == 52 and report["input"]["malformed_lines"] == 1
    example = dedup["examples"]["near"][0]
    assert "changed" in example["text"] and "changed" not in example["duplicate_of_text"]
    assert example["duplicate_of"].rsplit("@", 1)[0] in report["input"]["files"]


def test_a_stage_refuses_a_task_it_does_not_have(tmp_path):
    _corpus(tmp_path / "in")
    files = sorted((tmp_path / "in").glob("*.jsonl"))
    work = tmp_path / "work"
    write_config(work, plan([str(f) for f in files], [f.stat().st_size for f in files], 2, str(tmp_path / "o")))
    assert load_config(work).stage_tasks("clusters") == 1
    with pytest.raises(ValueError, match=r"tasks 0\.\.0"):
        run_stage(work, "clusters", 1)
    with pytest.raises(ValueError, match="unknown stage"):
        run_stage(work, "dedupe", 0)


def test_the_quality_stage_drops_what_is_unlike_the_reference(tmp_path):
    rng = random.Random(2)
    words = PROSE
    prose = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(12)]  # distinct: no near dups
    noise = ["".join(rng.choice("qxzjv#@%$&*") for _ in range(200)) for _ in range(3)]
    sentences = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(40)]
    corpus, reference = tmp_path / "corpus.jsonl", tmp_path / "reference.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*prose[:6], *noise, *prose[6:]]))
    reference.write_text("".join(json.dumps({"text": sentence}) + "\n" for sentence in sentences))
    config = plan([str(corpus)], [corpus.stat().st_size], 2, str(tmp_path / "out"), reference=[str(reference)],
                  max_perplexity=30.0)  # fmt: skip
    report = run_all_stages(config, tmp_path / "work")
    kept = [json.loads(line)["text"] for shard in report["shards"] for line in Path(shard).read_text().splitlines()]
    assert kept == prose
    quality = report["level1"]["quality"]
    assert quality["removed"] == 3 and all(e["perplexity"] > 30 for e in quality["examples"])


def test_a_new_run_clears_the_last_runs_shards_and_never_empties_a_foreign_folder(tmp_path):
    from moeops.datafilter.local import clear_previous_run

    output, work = tmp_path / "out", tmp_path / "out" / ".work"
    (work / "signatures").mkdir(parents=True)
    (work / "config.json").write_text("{}")
    for name in ("part-00000.jsonl", "part-00003.jsonl", "report.json"):
        (output / name).write_text("x")
    clear_previous_run(output, work)
    assert sorted(p.name for p in output.iterdir()) == [".work", "report.json"] and not any(work.iterdir())
    (output / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        clear_previous_run(output, work)
    assert (output / "notes.txt").exists()
