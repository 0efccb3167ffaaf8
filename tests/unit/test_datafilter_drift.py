"""Drift of the filtered corpus from the reference: PSI of lengths and words (moeops.datafilter.drift), in the
filter's report and, through task 0's termination message, as the DataDrift condition on the job."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from datafilter_corpus import PROSE, run_all_stages
from moeops.datafilter.config import plan
from moeops.datafilter.drift import DRIFT_PSI, Profile, drift, psi
from moeops.operator.status.conditions import StatusUpdate
from moeops.operator.status.data_filter import filter_status, filtered_update

CODE = [
    "def",
    "return",
    "self",
    "import",
    "class",
    "for",
    "while",
    "lambda",
    "yield",
    "none",
    "true",
    "false",
    "print",
    "range",
    "len",
]


def _docs(rng: random.Random, words: list[str], count: int, length: int = 40) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(length)) for _ in range(count)]


def test_psi_is_small_for_the_same_distribution_and_large_for_another() -> None:
    rng = random.Random(3)
    reference = Profile.of(_docs(rng, PROSE, 200))
    same = drift(reference, Profile.of(_docs(rng, PROSE, 200)))
    other = drift(reference, Profile.of(_docs(rng, CODE, 200)))
    longer = drift(reference, Profile.of(_docs(rng, PROSE, 200, length=400)))
    assert not same["drifted"] and float(same["psi_terms"]) < 0.1 and float(same["psi_lengths"]) < 0.1
    assert other["drifted"] and float(other["psi_terms"]) > DRIFT_PSI
    assert longer["drifted"] and float(longer["psi_lengths"]) > DRIFT_PSI and float(longer["psi_terms"]) < 0.1
    assert psi(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="empty histogram"):
        psi(np.zeros(2), np.ones(2))


def _filter(tmp_path: Path, candidate: list[str], reference: list[str]) -> dict[str, object]:
    tmp_path.mkdir()
    corpus, ref = tmp_path / "corpus.jsonl", tmp_path / "reference.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in candidate))
    ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in reference))
    config = plan([str(corpus)], [corpus.stat().st_size], 1, str(tmp_path / "out"), reference=[str(ref)],
                  max_perplexity=1e9)  # fmt: skip
    return run_all_stages(config, tmp_path / "work")


def test_the_report_says_whether_the_kept_corpus_drifted_from_the_reference(tmp_path: Path) -> None:
    rng = random.Random(5)
    reference = _docs(rng, PROSE, 60)
    close = _filter(tmp_path / "close", _docs(rng, PROSE, 30), reference)
    far = _filter(tmp_path / "far", _docs(rng, CODE, 30), reference)
    assert close["drift"] is not None and far["drift"] is not None
    assert not close["drift"]["drifted"] and far["drift"]["drifted"]  # type: ignore[index]


def test_drift_in_task_0s_message_raises_the_datadrift_condition_once() -> None:
    summary = {"documents": 30, "kept": 30, "level1": {"exact": 0, "near": 0, "quality": 0}, "malformed": 0,
               "drift": {"psi_lengths": 0.01, "psi_terms": 3.2, "threshold": 0.25, "drifted": True}}  # fmt: skip
    terminated = {"exitCode": 0, "message": json.dumps(summary)}
    statuses = [{"name": "filter", "state": {"terminated": terminated}}]
    annotations = {"batch.kubernetes.io/job-completion-index": "0"}
    pod = {"metadata": {"annotations": annotations}, "status": {"phase": "Succeeded", "containerStatuses": statuses}}
    job = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    found = filter_status(job, [pod], container="filter", output="pvc://c/v.filtered", tasks=1)
    assert found["drift"] == {"psiLengths": 0.01, "psiTerms": 3.2, "threshold": 0.25, "drifted": True}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    update = filtered_update(StatusUpdate({"state": "Created"}), {}, found, generation=1, now=now)
    (condition,) = [c for c in update.patch["conditions"] if c["type"] == "DataDrift"]
    assert condition["status"] == "True" and condition["reason"] == "DriftFromReference"
    assert "words 3.2" in condition["message"]
    assert ("Warning", "DriftFromReference") in [(e.type, e.reason) for e in update.events]
    again = filtered_update(StatusUpdate({"state": "Running"}), update.patch, found, generation=1, now=now)
    assert [e.reason for e in again.events] == [], "one Warning when it turns True, not one per status write"
