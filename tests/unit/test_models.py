"""The typed models accept what the CRDs accept and reject bad input with field-named errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from moeops.api.v1alpha1 import InferenceServiceSpec, MoETrainingJobSpec
from moeops.api.v1alpha1.common import VolumeLocation

REPO = Path(__file__).resolve().parents[2]
MODELS = {"MoETrainingJob": MoETrainingJobSpec, "InferenceService": InferenceServiceSpec}


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        MODELS[doc["kind"]].model_validate(doc["spec"])


def minimal() -> dict:
    return {
        "model": {"preset": "moe-debug"},
        "data": {"source": "synthetic://x"},
        "training": {"steps": 10},
        "workers": {"replicas": 1},
    }


def test_defaults_match_the_documented_ones() -> None:
    spec = MoETrainingJobSpec.model_validate(minimal())
    assert spec.parallelism.mode == "auto"
    assert spec.workers.gpus_per_worker == 1 and spec.workers.gpu_memory_gib == 80.0
    assert spec.run_policy.backoff_limit == 3 and not spec.run_policy.suspend
    assert spec.checkpoint.storage.path == "/"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"workers": {"replicas": 0}}, "workers.replicas"),
        ({"training": {"steps": "many"}}, "training.steps"),
        ({"model": {"preset": "nope"}}, "model.preset"),
        ({"unknown": 1}, "unknown"),
        ({"checkpoint": {"storage": {"path": "/a/../b"}}}, "checkpoint.storage.path"),
    ],
)
def test_bad_input_names_the_field(patch: dict, field: str) -> None:
    spec = {**minimal(), **patch}
    with pytest.raises(ValidationError) as info:
        MoETrainingJobSpec.model_validate(spec)
    locations = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert any(loc.startswith(field) for loc in locations), locations


def test_wire_form_is_camel_case_without_unset_fields() -> None:
    wire = MoETrainingJobSpec.model_validate(minimal()).to_wire()
    assert "runPolicy" in wire and "run_policy" not in wire
    assert "activeDeadlineSeconds" not in wire["runPolicy"]
    assert wire["workers"]["gpuMemoryGiB"] == 80.0


def test_volume_location_resolves_inside_its_mount() -> None:
    assert VolumeLocation(path="/a/b").in_mount("/checkpoints") == "/checkpoints/a/b"
    assert VolumeLocation().in_mount("/models") == "/models"
