"""`moeops train --job`: a manifest resolved locally by the operator's own planner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


def _explicit_job(tmp_path: Path, data: int, tensor: int, pipeline: int, expert: int = 1) -> Path:
    text = (REPO / "examples" / "moe-debug-trainingjob.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["spec"]["parallelism"] = {"mode": "explicit", "data": data, "tensor": tensor, "pipeline": pipeline,
                                  "expert": expert}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_explicit_parallelism_is_kept_not_replaced_by_auto(tmp_path: Path) -> None:
    config = local_config(_explicit_job(tmp_path, data=2, tensor=1, pipeline=2, expert=2), 4, tmp_path / "ckpt")
    assert (config.plan.data, config.plan.tensor, config.plan.pipeline, config.plan.expert) == (2, 1, 2, 2)


def test_an_explicit_parallelism_for_another_number_of_ranks_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"explicit .* = 4 ranks\) but the run has 2 local rank\(s\): run it with --nproc 4"
    ):
        local_config(_explicit_job(tmp_path, data=2, tensor=1, pipeline=2), 2, tmp_path / "ckpt")
