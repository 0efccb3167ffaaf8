"""The CRDs on a real API server: they install, `kubectl explain` reads well, and bad specs are rejected
at apply time with a message that names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Cluster
from manifests import DELETE, inference_service, merge, training_job


def test_kubectl_explain_prints_the_model_descriptions(cluster: Cluster) -> None:
    def explain(path: str) -> str:
        return " ".join(cluster.kubectl("explain", path).stdout.split())  # kubectl wraps long lines

    spec = explain("moetrainingjob.spec")
    assert "Desired state of a MoETrainingJob" in spec
    assert "parallelism" in spec and "runPolicy" in spec
    par = explain("moetrainingjob.spec.parallelism")
    assert "`auto` lets the operator choose by cluster scale" in par
    assert "Tensor-parallel degree (within a node)" in par
    isvc = explain("inferenceservices.moeops.dev.spec.earlyExit")
    assert "Exit when confidence" in isvc


def test_short_names_do_not_collide_with_kserve(cluster: Cluster) -> None:
    resources = cluster.kubectl("api-resources", "--api-group=moeops.dev").stdout
    assert "moejob" in resources and "misvc" in resources
    assert " isvc" not in resources


BAD_TRAINING_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("missing model", {"model": DELETE}, "spec.model: Required value"),
    ("missing data source", {"data": {"source": DELETE}}, "spec.data.source: Required value"),
    ("steps of the wrong type", {"training": {"steps": "ten"}}, "spec.training.steps"),
    ("zero steps", {"training": {"steps": 0}}, "spec.training.steps"),
    ("negative workers", {"workers": {"replicas": -1}}, "spec.workers.replicas"),
    ("too many GPUs per worker", {"workers": {"gpusPerWorker": 17}}, "spec.workers.gpusPerWorker"),
    ("unknown preset", {"model": {"preset": "gpt-5"}}, "spec.model.preset: Unsupported value"),
    ("explicit model half given", {"model": {"preset": DELETE, "layers": 4}}, "set model.preset, or all of"),
    (
        "topK above experts",
        {"model": {"preset": DELETE, "layers": 2, "dModel": 64, "heads": 4, "experts": 4, "topK": 8, "ffnHidden": 64}},
        "model.topK must be at most model.experts",
    ),
    (
        "dModel not divisible by heads",
        {"model": {"preset": DELETE, "layers": 2, "dModel": 65, "heads": 4, "experts": 4, "topK": 2, "ffnHidden": 64}},
        "model.dModel must be a multiple of model.heads",
    ),
    ("explicit mode without degrees", {"parallelism": {"mode": "explicit", "data": 2}}, "mode explicit needs"),
    ("auto mode with a degree", {"parallelism": {"data": 2}}, "chosen by the operator in mode auto"),
    (
        "degrees that don't multiply out",
        {"parallelism": {"mode": "explicit", "data": 4, "tensor": 1, "pipeline": 1}},
        "data × tensor × pipeline must equal workers.replicas × workers.gpusPerWorker",
    ),
    (
        "expert degree not dividing data",
        {
            "workers": {"replicas": 3},
            "parallelism": {"mode": "explicit", "data": 3, "tensor": 1, "pipeline": 1, "expert": 2},
        },
        "parallelism.expert must divide parallelism.data",
    ),
    (
        "expert degree not dividing experts",
        {
            "model": {
                "preset": DELETE,
                "layers": 2,
                "dModel": 64,
                "heads": 4,
                "experts": 3,
                "topK": 1,
                "ffnHidden": 64,
            },
            "parallelism": {"mode": "explicit", "data": 2, "tensor": 1, "pipeline": 1, "expert": 2},
        },
        "parallelism.expert must divide model.experts",
    ),
    (
        "tensor degree not dividing heads",
        {
            "model": {
                "preset": DELETE,
                "layers": 2,
                "dModel": 60,
                "heads": 3,
                "experts": 4,
                "topK": 1,
                "ffnHidden": 64,
            },
            "parallelism": {"mode": "explicit", "data": 1, "tensor": 2, "pipeline": 1},
        },
        "parallelism.tensor must divide model.heads",
    ),
    (
        "more pipeline stages than layers",
        {
            "model": {
                "preset": DELETE,
                "layers": 1,
                "dModel": 64,
                "heads": 4,
                "experts": 4,
                "topK": 1,
                "ffnHidden": 64,
            },
            "parallelism": {"mode": "explicit", "data": 1, "tensor": 1, "pipeline": 2},
        },
        "parallelism.pipeline must be at most model.layers",
    ),
    ("warmup as long as training", {"training": {"steps": 10, "warmupSteps": 10}}, "warmupSteps must be less than"),
    ("zero learning rate", {"training": {"learningRate": 0}}, "spec.training.learningRate"),
    (
        "data shares re-planned less often than the rest",
        {"rebalance": {"intervalSteps": 10, "dataIntervalSteps": 20}},
        "dataIntervalSteps must not exceed",
    ),
    ("unknown precision", {"training": {"precision": "fp8"}}, "spec.training.precision: Unsupported value"),
    ("unsupported data scheme", {"data": {"source": "ftp://host/data"}}, "spec.data.source"),
    (
        "GPUs in resources",
        {"workers": {"resources": {"limits": {"nvidia.com/gpu": "8"}}}},
        "do not set nvidia.com/gpu in resources",
    ),
    (
        "malformed quantity",
        {"workers": {"resources": {"requests": {"cpu": "lots"}}}},
        "spec.workers.resources.requests.cpu",
    ),
    ("relative checkpoint path", {"checkpoint": {"storage": {"path": "ckpt"}}}, "spec.checkpoint.storage.path"),
    (
        "checkpoint path escaping the volume",
        {"checkpoint": {"storage": {"path": "/a/../../etc"}}},
        "must not contain '..'",
    ),
    ("negative backoff limit", {"runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit"),
    ("PUE is the data centre's, not a job field", {"carbon": {"pue": 1.2}}, 'unknown field "spec.carbon.pue"'),
    ("invalid queue name", {"scheduling": {"queueName": "Bad_Queue"}}, "spec.scheduling.queueName"),
    (
        "early-exit loss with pipeline stages",
        {
            "training": {"earlyExit": {"lossWeight": 0.2}},
            "parallelism": {"mode": "explicit", "data": 1, "tensor": 1, "pipeline": 2},
        },
        "training.earlyExit needs every layer's hidden state on one rank",
    ),
    (
        "early exits trained from the output layer",
        {
            "model": {
                "preset": DELETE,
                "layers": 2,
                "dModel": 64,
                "heads": 4,
                "experts": 4,
                "topK": 1,
                "ffnHidden": 64,
            },
            "training": {"earlyExit": {"lossWeight": 0.2, "minLayer": 2}},
        },
        "training.earlyExit.minLayer must be less than model.layers",
    ),
    ("negative exit loss weight", {"training": {"earlyExit": {"lossWeight": -1}}}, "earlyExit.lossWeight"),
    ("unknown field", {"gpus": 8}, 'unknown field "spec.gpus"'),
    (
        "worker env setting the operator's variable",
        {"workers": {"env": [{"name": "MOEOPS_JOB_NAME", "value": "other"}]}},
        'spec.workers.env[0].name: Invalid value: "object": workers.env must not set a variable the operator sets',
    ),
    (
        "worker env setting the rendezvous port",
        {"workers": {"env": [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "MASTER_PORT", "value": "1"}]}},
        'spec.workers.env[1].name: Invalid value: "object": workers.env must not set a variable the operator sets',
    ),
    ("worker env name not an identifier", {"workers": {"env": [{"name": "1-X"}]}}, "spec.workers.env[0].name"),
    ("worker env name twice", {"workers": {"env": [{"name": "X"}, {"name": "X"}]}}, "spec.workers.env[1]: Duplicate"),
    (
        "worker env from a field",
        {"workers": {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}},
        'unknown field "spec.workers.env[0].valueFrom"',
    ),
    ("worker env too long", {"workers": {"env": [{"name": f"V{i}"} for i in range(33)]}}, "spec.workers.env: Too many"),
]


@pytest.mark.parametrize(("case", "override", "message"), BAD_TRAINING_SPECS, ids=[c[0] for c in BAD_TRAINING_SPECS])
def test_invalid_training_job_is_rejected_naming_the_field(
    cluster: Cluster, case: str, override: dict[str, Any], message: str
) -> None:
    manifest = training_job("bad", "default", override)
    result = cluster.kubectl.apply(manifest, "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: accepted but should be rejected"
    assert message in result.stderr, f"{case}: {result.stderr}"


def test_worker_env_takes_the_fault_injection(cluster: Cluster) -> None:
    fault = {"name": "MOEOPS_FAULT_SEQUENCE_DELAY", "value": "1:0.05"}
    result = cluster.kubectl.apply(training_job("faulty", "default", {"workers": {"env": [fault]}}), "--dry-run=server",
                                   "-o", "json")  # fmt: skip
    assert json.loads(result.stdout)["spec"]["workers"]["env"] == [fault]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x" * 49, "metadata.name must be at most 48 characters"),
        ("1st-job", "metadata.name must be a DNS-1035 label"),
    ],
)
def test_invalid_training_job_names_are_rejected(cluster: Cluster, name: str, message: str) -> None:
    result = cluster.kubectl.apply(training_job(name, "default"), "--dry-run=server", check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


BAD_INFERENCE_SPECS: list[tuple[str, dict[str, Any], str]] = [
    (
        "both model sources",
        {"model": {"trainingJobRef": {"name": "j"}}},
        "set exactly one of model.trainingJobRef and model.checkpoint",
    ),
    (
        "no model source",
        {"model": {"checkpoint": DELETE}},
        "set exactly one of model.trainingJobRef and model.checkpoint",
    ),
    ("min above max replicas", {"replicas": {"min": 3, "max": 2}}, "replicas.min must be at most replicas.max"),
    ("negative replicas", {"replicas": {"min": -1}}, "spec.replicas.min"),
    ("threshold above 1", {"earlyExit": {"threshold": 1.5}}, "spec.earlyExit.threshold"),
    ("unknown confidence rule", {"earlyExit": {"rule": "entropy"}}, "spec.earlyExit.rule: Unsupported value"),
    ("privileged port", {"port": 80}, "spec.port"),
    ("zero batch size", {"batching": {"maxBatchSize": 0}}, "spec.batching.maxBatchSize"),
    ("too short a scale-down window", {"replicas": {"stableWindowSeconds": 1}}, "spec.replicas.stableWindowSeconds"),
]


@pytest.mark.parametrize(("case", "override", "message"), BAD_INFERENCE_SPECS, ids=[c[0] for c in BAD_INFERENCE_SPECS])
def test_invalid_inference_service_is_rejected_naming_the_field(
    cluster: Cluster, case: str, override: dict[str, Any], message: str
) -> None:
    result = cluster.kubectl.apply(inference_service("bad", "default", override), "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: accepted but should be rejected"
    assert message in result.stderr, f"{case}: {result.stderr}"


@pytest.mark.parametrize(
    ("case", "change", "message"),
    [
        ("model", {"model": {"preset": "moe-small"}}, "spec.model is immutable"),
        ("workers", {"workers": {"replicas": 3}}, "spec.workers is immutable"),
        ("training", {"training": {"steps": 5}}, "spec.training is immutable"),
        ("parallelism", {"parallelism": {"activationCheckpointing": True}}, "spec.parallelism is immutable"),
        ("checkpoint", {"checkpoint": {"intervalSteps": 7}}, "spec.checkpoint is immutable"),
    ],
)
def test_immutable_fields_cannot_change(cluster: Cluster, case: str, change: dict[str, Any], message: str) -> None:
    name = f"immutable-{case}"
    original = training_job(name, "default", {"runPolicy": {"suspend": True}})
    cluster.kubectl.apply(original)
    try:
        result = cluster.kubectl.apply(merge(original, {"spec": change}), check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        # Mutable fields still change.
        cluster.kubectl.apply(merge(original, {"spec": {"runPolicy": {"backoffLimit": 4}}}))
    finally:
        cluster.kubectl("delete", "moetrainingjob", name, "--wait=false")


def test_defaults_are_filled_in_by_the_api_server(cluster: Cluster) -> None:
    result = cluster.kubectl.apply(training_job("defaults", "default"), "--dry-run=server", "-o", "json")
    spec = json.loads(result.stdout)["spec"]
    assert spec["parallelism"] == {"mode": "auto"}
    assert spec["checkpoint"] == {"intervalSteps": 500, "keep": 3, "storage": {"path": "/"}}
    assert spec["runPolicy"]["suspend"] is False
    assert spec["training"]["precision"] == "bf16"
