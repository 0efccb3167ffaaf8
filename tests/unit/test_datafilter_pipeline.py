"""The filter Job's pods: N tasks started at once, each through every stage, meeting at file barriers in a shared
work folder (moeops.datafilter.pipeline), as processes here as in the pods of the operator's Indexed Job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datafilter_corpus import corpus as _corpus
from moeops.datafilter.pipeline import StageTimeout, run_task


def _pipeline(tmp_path: Path, tasks: int) -> list[subprocess.Popen[bytes]]:
    work = tmp_path / "out" / ".work" / "uid-1"
    args = [str(tmp_path / "in"), str(tmp_path / "out"), str(work), "--tasks", str(tasks)]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "moeops.datafilter.pipeline", *args, "--summary", str(tmp_path / f"term-{t}")],
            env={**os.environ, "JOB_COMPLETION_INDEX": str(t)},
        )
        for t in reversed(range(tasks))  # the others start first: they wait for task 0's plan
    ]


@pytest.mark.slow  # three processes
def test_tasks_started_together_run_every_stage_and_task_0_reports(tmp_path: Path) -> None:
    kinds = _corpus(tmp_path / "in")
    procs = _pipeline(tmp_path, 3)
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    summary = json.loads((tmp_path / "term-0").read_text())
    assert summary == {"documents": 52, "kept": 40, "level1": {"exact": 6, "near": 6, "quality": 0}, "malformed": 1}
    assert not (tmp_path / "term-1").exists(), "only task 0 reports"
    assert report["kept"] == 40 and report["tasks"] == 3
    kept = [json.loads(line)["id"] for shard in sorted((tmp_path / "out").glob("part-*.jsonl"))
            for line in shard.read_text().splitlines()]  # fmt: skip
    assert sorted(kept) == sorted(i for i, kind in kinds.items() if kind == "original")


def test_a_restarted_task_skips_the_stages_it_finished(tmp_path: Path) -> None:
    _corpus(tmp_path / "in")
    work = tmp_path / "out" / ".work"
    report = run_task(tmp_path / "in", tmp_path / "out", work, 0, 1)
    assert report is not None and report["kept"] == 40
    signatures = work / "signatures" / "task-00000.exact.npy"
    before = signatures.stat().st_mtime_ns
    again = run_task(tmp_path / "in", tmp_path / "out", work, 0, 1)
    assert again is not None and again["kept"] == 40
    assert signatures.stat().st_mtime_ns == before, "a finished stage is not run again"


def test_a_task_whose_peers_never_come_times_out_naming_what_is_missing(tmp_path: Path) -> None:
    _corpus(tmp_path / "in")
    with pytest.raises(StageTimeout, match=r"stage signatures: missing signatures\.00001"):
        run_task(tmp_path / "in", tmp_path / "out", tmp_path / "work", 0, 2, timeout_s=0.5)
    with pytest.raises(ValueError, match=r"task 2 is not one of 0\.\.1"):
        run_task(tmp_path / "in", tmp_path / "out", tmp_path / "work", 2, 2)
