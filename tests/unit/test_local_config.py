"""`moeops train --job`: a manifest resolved locally by the operator's own planner."""

from __future__ import annotations

from pathlib import Path

import pytest

from moeops.local import local_config

REPO = Path(__file__).resolve().parents[2]


def test_the_debug_example_resolves_to_data_parallel_over_local_ranks(tmp_path: Path) -> None:
    config = local_config(REPO / "examples" / "moe-debug-trainingjob.yaml", 2, tmp_path / "ckpt")
    assert (config.plan.data, config.plan.tensor, config.plan.pipeline) == (2, 1, 1)
    assert config.architecture.layers == 2 and config.data.source == "synthetic://all"
    assert config.checkpoint.directory == str(tmp_path / "ckpt")
    assert (config.training.steps, config.training.global_batch_size) == (1500, 64)
    assert config.architecture.vocab_size == 56  # the spec's override of the preset's 512


def test_a_file_without_a_training_job_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "isvc.yaml"
    path.write_text((REPO / "examples" / "moe-small-inferenceservice.yaml").read_text())
    with pytest.raises(ValueError, match="expected exactly one MoETrainingJob"):
        local_config(path, 1, tmp_path)
