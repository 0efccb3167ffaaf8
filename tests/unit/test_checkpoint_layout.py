"""The checkpoint layout the trainer writes and serving reads (moeops.checkpoint.layout): no torch, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moeops.checkpoint.layout import (
    CheckpointError,
    find_run_config,
    latest,
    partial_step_dir,
    resolve_checkpoint,
    step_dir,
    step_dirs,
)


def complete(root: Path, step: int) -> Path:
    path = step_dir(root, step)
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"step": step}))
    return path


def test_the_newest_complete_step_wins_and_saves_in_progress_are_ignored(tmp_path: Path) -> None:
    complete(tmp_path, 9)
    newest = complete(tmp_path, 10)
    partial_step_dir(tmp_path, 11).mkdir()  # a save killed mid-way
    (tmp_path / "step-00000012").write_text("not a directory")
    assert [step for step, _ in step_dirs(tmp_path)] == [9, 10]
    assert latest(tmp_path) == (10, newest)
    assert resolve_checkpoint(tmp_path) == (newest, 10)
    assert resolve_checkpoint(step_dir(tmp_path, 9)) == (step_dir(tmp_path, 9), 9)
    assert latest(tmp_path / "absent") is None


def test_a_directory_without_a_checkpoint_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve_checkpoint(tmp_path / "absent")
    step_dir(tmp_path, 1).mkdir()  # the final name but no meta.json
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not a checkpoint"):
        resolve_checkpoint(tmp_path)


def test_the_run_config_is_the_run_directorys_then_the_checkpoint_roots(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    step = complete(root, 1)
    with pytest.raises(CheckpointError, match="give the run's resolved config with --config"):
        find_run_config(step)
    (root / "config.json").write_text("{}")  # what the trainer keeps beside its checkpoints
    assert find_run_config(step) == root / "config.json"
    (tmp_path / "run" / "config.json").write_text("{}")  # what `moeops train --job` writes
    assert find_run_config(step) == tmp_path / "run" / "config.json"
    assert find_run_config(step, tmp_path / "given.json") == tmp_path / "given.json"
