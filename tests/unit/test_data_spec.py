"""`spec.data` in the models (the same rules the API server applies as CEL: tests/e2e/test_data_sources.py) and the
data claim in the worker pods."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from moeops.api.v1alpha1 import MoETrainingJobSpec
from moeops.api.v1alpha1.data import DataSpec, pvc_claim_and_path
from moeops.operator.children.training import training_children
from moeops.operator.config import OperatorConfig
from moeops.operator.naming import Owner
from moeops.operator.planning import plan_training_job

OWNER = Owner("moeops.dev/v1alpha1", "MoETrainingJob", "demo", "ml", "uid-1", 1)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("s3://bucket/corpus", "should match pattern"),
        ("pvc://Corpus/v3", "a pvc source is pvc://<claim>/<path>"),
        ("pvc://corpus_v3/x", "a pvc source is pvc://<claim>/<path>"),
        ("file://data/corpus", "three slashes"),
        ("file:///data/../etc", "must not contain '..' segments"),
        ("pvc://corpus/..", "must not contain '..' segments"),
    ],
)
def test_sources_the_trainer_cannot_read_are_refused(source: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DataSpec(source=source)


@pytest.mark.parametrize(
    ("source", "claim", "path"),
    [
        ("pvc://corpus/v3/train", "corpus", "/v3/train"),
        ("pvc://corpus", "corpus", "/"),
        ("pvc://corpus/", "corpus", "/"),
        ("pvc://team.corpus-2/a//b/", "team.corpus-2", "/a/b"),
    ],
)
def test_a_pvc_source_names_its_claim_and_path(source: str, claim: str, path: str) -> None:
    assert pvc_claim_and_path(source) == (claim, path)
    assert DataSpec(source=source).claim() == claim


def test_file_and_synthetic_sources_name_no_claim() -> None:
    assert DataSpec(source="file:///corpus").claim() is None
    assert DataSpec(source="synthetic://all").claim() is None


def pod_of(data: dict[str, Any], checkpoint_claim: str | None = "ckpt") -> dict[str, Any]:
    storage = {"claimName": checkpoint_claim} if checkpoint_claim else {}
    spec = MoETrainingJobSpec.model_validate(
        {
            "model": {"preset": "moe-debug"},
            "data": data,
            "training": {"steps": 10, "globalBatchSize": 8},
            "workers": {"replicas": 2, "gpusPerWorker": 0},
            "checkpoint": {"storage": storage},
        }
    )
    arch, plan = plan_training_job(spec)
    job = next(c.body for c in training_children(OWNER, spec, arch, plan, OperatorConfig()) if c.kind == "Job")
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def test_the_data_claim_is_mounted_read_only_where_the_trainer_looks() -> None:
    pod = pod_of({"source": "pvc://corpus/v3", "format": "text"})
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}}
    (container,) = pod["containers"]
    mounts = [m for m in container["volumeMounts"] if m["name"] == "data"]
    assert mounts == [{"name": "data", "mountPath": "/data/corpus", "readOnly": True}]


def test_data_on_the_checkpoint_claim_reuses_its_volume_read_only() -> None:
    pod = pod_of({"source": "pvc://ckpt/corpus"})
    assert [v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v] == ["checkpoints"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "checkpoints"}
    assert mounts["/data/ckpt"]["readOnly"] is True and not mounts["/checkpoints"].get("readOnly")


@pytest.mark.parametrize("source", ["synthetic://all", "file:///corpus"])
def test_no_data_volume_without_a_pvc_source(source: str) -> None:
    pod = pod_of({"source": source}, checkpoint_claim=None)
    assert "data" not in {v["name"] for v in pod["volumes"]}
    assert not [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"].startswith("/data")]
