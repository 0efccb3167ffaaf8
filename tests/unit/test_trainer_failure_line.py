"""The one line a failed local run ends with: what died and the step a rerun resumes from."""

from __future__ import annotations

from pathlib import Path

from moeops.checkpoint.layout import step_dir
from moeops.trainer.failure_line import checkpoint_root_of, failure_line


def test_a_killed_worker_is_named_with_its_signal_and_the_step_a_rerun_resumes_from(tmp_path: Path) -> None:
    for step in (20, 40):
        step_dir(tmp_path, step).mkdir(parents=True)
    (tmp_path / ".step-00000060.tmp").mkdir()  # a save the failure cut short: not resumable
    line = failure_line(rank=1, pid=4242, exitcode=-9, checkpoint_root=tmp_path)
    assert line == (
        f"moeops train: worker rank 1 (pid 4242) was killed by SIGKILL (exit 137); rerunning the same command"
        f" resumes from step 40 ({step_dir(tmp_path, 40)})"
    )
    assert "\n" not in line


def test_before_any_checkpoint_a_rerun_starts_over(tmp_path: Path) -> None:
    line = failure_line(rank=0, pid=7, exitcode=1, checkpoint_root=tmp_path / "none")
    assert "worker rank 0 (pid 7) exited with code 1" in line and "starts over from step 0" in line


def test_the_checkpoint_folder_is_the_workers_override_else_the_configs() -> None:
    config = '{"checkpoint": {"directory": "/ckpt/job"}}'
    assert checkpoint_root_of(config, ["--progress"]) == Path("/ckpt/job")
    assert checkpoint_root_of(config, ["--checkpoint-dir", "/tmp/x", "--progress"]) == Path("/tmp/x")
    assert checkpoint_root_of(config, ["--checkpoint-dir=/tmp/y"]) == Path("/tmp/y")
