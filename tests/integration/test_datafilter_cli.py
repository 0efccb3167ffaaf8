"""`moeops data filter` as a user runs it: the stages as processes (2 per stage), shards and report.json."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from moeops.cli import main


@pytest.mark.slow  # 4 stages of spawned processes: 5-12 s
def test_data_filter_cli_with_two_tasks(tmp_path):
    rng = random.Random(11)
    docs = [" ".join(f"t{rng.randrange(4000)}" for _ in range(100)) for _ in range(30)]
    lines = [json.dumps({"text": d}) for d in docs]
    lines += [json.dumps({"text": docs[3].title()}), json.dumps({"text": docs[4].replace(docs[4].split()[50], "x")})]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "filtered"
    result = CliRunner().invoke(
        main, ["data", "filter", "--input", str(corpus), "--output", str(out), "--tasks", "2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "32 documents: kept 30, removed 1 exact and 1 near duplicates" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"] == 2 and set(report["stage_seconds"]) == {"signatures", "buckets", "clusters", "filter"}
    shards = sorted(out.glob("part-*.jsonl"))
    assert len(shards) == 2
    assert [json.loads(line)["text"] for s in shards for line in s.read_text().splitlines()] == docs


def test_data_filter_cli_names_a_folder_without_jsonl(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["data", "filter", "--input", str(tmp_path / "empty"), "--output", str(tmp_path)])
    assert result.exit_code == 1 and "holds no .jsonl files" in result.output


def test_data_filter_cli_wants_reference_and_threshold_together(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "x"}\n')
    args = ["data", "filter", "--input", str(corpus), "--output", str(tmp_path / "o"), "--reference", str(corpus)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--reference and --max-perplexity go together" in result.output


def test_data_filter_cli_never_writes_over_its_input(tmp_path):
    (tmp_path / "part-00000.jsonl").write_text('{"text": "x"}\n')
    result = CliRunner().invoke(main, ["data", "filter", "--input", str(tmp_path), "--output", str(tmp_path)])
    assert result.exit_code == 1 and "holds input files" in result.output
    assert (tmp_path / "part-00000.jsonl").exists()
