"""The typed models accept what the CRDs accept and reject bad input with field-named errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from moeops.api.v1alpha1 import InferenceServiceSpec, MoETrainingJobSpec
from moeops.api.v1alpha1.common import VolumeLocation

REPO = Path(__file__).resolve().parents[2]
MODELS: dict[str, type[BaseModel]] = {"MoETrainingJob": MoETrainingJobSpec, "InferenceService": InferenceServiceSpec}


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] in MODELS:  # the examples also hold the claims they need
            MODELS[doc["kind"]].model_validate(doc["spec"])


def minimal() -> dict[str, Any]:
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
def test_bad_input_names_the_field(patch: dict[str, Any], field: str) -> None:
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


def workers_with_env(*env: dict[str, Any]) -> dict[str, Any]:
    return {**minimal(), "workers": {"replicas": 1, "env": list(env)}}


def test_worker_env_takes_plain_values_and_the_fault_injection() -> None:
    fault, threads = (
        {"name": "MOEOPS_FAULT_SEQUENCE_DELAY", "value": "1:0.05"},
        {"name": "OMP_NUM_THREADS", "value": "1"},
    )
    spec = MoETrainingJobSpec.model_validate(workers_with_env(fault, threads))
    assert [(v.name, v.value) for v in spec.workers.env or ()] == [
        ("MOEOPS_FAULT_SEQUENCE_DELAY", "1:0.05"),
        ("OMP_NUM_THREADS", "1"),
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ([{"name": "MOEOPS_JOB_NAME", "value": "other"}], "must not set a variable the operator sets"),
        ([{"name": "MOEOPS_NATS_URL", "value": "nats://elsewhere:4222"}], "must not set a variable the operator sets"),
        ([{"name": "MASTER_PORT", "value": "1"}], "must not set a variable the operator sets"),
        ([{"name": "1ST", "value": "x"}], "should match pattern"),
        ([{"name": "A-B", "value": "x"}], "should match pattern"),
        ([{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}], "Extra inputs"),
        ([{"name": "X", "value": "1"}, {"name": "X", "value": "2"}], "sets X more than once"),
        ([{"name": f"V{i}", "value": ""} for i in range(33)], "at most 32 items"),
    ],
    ids=["operator-variable", "bus-variable", "rendezvous", "leading-digit", "dash", "value-from", "twice", "33"],
)
def test_worker_env_refuses_what_the_operator_sets_and_non_identifiers(env: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        MoETrainingJobSpec.model_validate(workers_with_env(*env))
    locations = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert all(loc.startswith("workers.env") for loc in locations), locations
