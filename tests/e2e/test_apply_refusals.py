"""What the API server would refuse in a child is refused at apply, by the CRD (real API server, `--dry-run=server`):
each case names the field, and its valid neighbour is accepted (so a rule that refused everything would fail)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Cluster
from manifests import inference_service, training_job

TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    # (case, spec override, what the error says: the field's path and the rule's message)
    ("nodeSelector key with a space", {"workers": {"nodeSelector": {"gpu type": "a100"}}},
     "spec.workers.nodeSelector: Invalid value: \"object\": workers.nodeSelector: every key must be a label key"),
    ("nodeSelector key with an empty name", {"workers": {"nodeSelector": {"example.com/": "x"}}},
     "workers.nodeSelector: every key must be a label key"),
    ("nodeSelector key too long", {"workers": {"nodeSelector": {"k" * 64: "x"}}},
     "workers.nodeSelector: every key must be a label key"),
    ("nodeSelector value with a space", {"workers": {"nodeSelector": {"gpu": "a 100"}}},
     "spec.workers.nodeSelector.gpu: Invalid value"),
    ("nodeSelector value too long", {"workers": {"nodeSelector": {"gpu": "a" * 64}}},
     "spec.workers.nodeSelector.gpu: Too long"),
    ("requests above limits", {"workers": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}}},
     "spec.workers.resources.requests: Invalid value: \"object\": resources.requests must not exceed"
     " resources.limits"),
    ("memory requests above limits in other units",
     {"workers": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "2000Mi"}}}},
     "resources.requests must not exceed resources.limits"),
    ("a negative request", {"workers": {"resources": {"requests": {"cpu": "-1"}}}},
     "spec.workers.resources.requests: Invalid value: \"object\": resource quantities must not be negative"),
    ("a negative limit", {"workers": {"resources": {"limits": {"memory": "-1Gi"}}}},
     "spec.workers.resources.limits: Invalid value: \"object\": resource quantities must not be negative"),
    ("a resource name with a space", {"workers": {"resources": {"limits": {"my resource": "1"}}}},
     "resources.limits: every key must be a label key"),
    ("toleration Exists with a value", {"workers": {"tolerations": [{**TOLERATION, "value": "true"}]}},
     "spec.workers.tolerations[0].value: Invalid value: \"object\": a toleration with operator Exists must not"
     " have a value"),
    ("toleration without key nor Exists", {"workers": {"tolerations": [{"operator": "Equal", "value": "x"}]}},
     "spec.workers.tolerations[0].operator: Invalid value: \"object\": a toleration without a key must have"
     " operator Exists"),
    ("toleration key with a space", {"workers": {"tolerations": [{**TOLERATION, "key": "gpu node"}]}},
     "spec.workers.tolerations[0].key: Invalid value"),
    ("tolerationSeconds without NoExecute", {"workers": {"tolerations": [{**TOLERATION, "tolerationSeconds": 5}]}},
     "spec.workers.tolerations[0].tolerationSeconds: Invalid value: \"object\": tolerationSeconds is for effect"
     " NoExecute only"),
    ("microBatchSize above globalBatchSize", {"training": {"globalBatchSize": 16, "microBatchSize": 32}},
     "spec.training.microBatchSize: Invalid value: \"object\": training.microBatchSize must be at most"
     " training.globalBatchSize"),
    ("schedulerName that is no DNS name", {"scheduling": {"schedulerName": "My Scheduler"}},
     "spec.scheduling.schedulerName: Invalid value"),
]  # fmt: skip
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("prefixed nodeSelector key", {"workers": {"nodeSelector": {"node.kubernetes.io/instance-type": "p5.48xlarge",
                                                                "gpu": ""}}}),
    ("requests equal to limits in other units",
     {"workers": {"resources": {"requests": {"memory": "1Gi", "cpu": "500m"}, "limits": {"memory": "1024Mi",
                                                                                         "cpu": "0.5"}}}}),
    ("a request without a limit", {"workers": {"resources": {"requests": {"cpu": "4"}, "limits": {"memory": "1Gi"}}}}),
    ("toleration Exists without a value", {"workers": {"tolerations": [TOLERATION]}}),
    ("toleration of every taint", {"workers": {"tolerations": [{"operator": "Exists"}]}}),
    ("NoExecute toleration for a while", {"workers": {"tolerations": [{"key": "spot", "operator": "Equal",
                                                                       "value": "true", "effect": "NoExecute",
                                                                       "tolerationSeconds": 30}]}}),
    ("microBatchSize equal to globalBatchSize", {"training": {"globalBatchSize": 16, "microBatchSize": 16}}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "override", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_a_child_would_be_refused_for_is_refused_at_apply(
    cluster: Cluster, case: str, override: dict[str, Any], message: str
) -> None:
    result = cluster.kubectl.apply(training_job("refused", "default", override), "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: accepted but should be refused"
    assert message in result.stderr, f"{case}: {result.stderr}"


@pytest.mark.parametrize(("case", "override"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_the_valid_neighbours_are_accepted(cluster: Cluster, case: str, override: dict[str, Any]) -> None:
    result = cluster.kubectl.apply(training_job("accepted", "default", override), "--dry-run=server", check=False)
    assert result.returncode == 0, f"{case}: {result.stderr}"


def test_the_inference_services_resources_follow_the_same_rules(cluster: Cluster) -> None:
    above = {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}
    result = cluster.kubectl.apply(inference_service("refused", "default", above), "--dry-run=server", check=False)
    assert result.returncode != 0 and "resources.requests must not exceed resources.limits" in result.stderr


def test_a_spec_of_megabytes_cannot_be_stored(cluster: Cluster) -> None:
    """Every string, list and map of the spec is bounded: a 1.5 MB spec is refused before it reaches etcd."""
    huge = {"workers": {"nodeSelector": {"x" * 1_500_000: "v"}}}  # a map's keys have no maxLength of their own
    manifest = json.dumps(training_job("huge", "default", huge))  # create: apply's annotation would be refused first
    result = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=manifest, check=False)
    assert result.returncode != 0
    assert "workers.nodeSelector" in result.stderr, result.stderr[:2000]


def test_an_inference_service_cannot_take_a_training_jobs_worker_service_name(cluster: Cluster) -> None:
    result = cluster.kubectl.apply(inference_service("trainer-workers", "default"), "--dry-run=server", check=False)
    assert result.returncode != 0
    assert "metadata.name must not end with '-workers'" in result.stderr, result.stderr
    assert cluster.kubectl.apply(inference_service("trainer-work", "default"), "--dry-run=server").returncode == 0


@pytest.mark.parametrize("job", ["9lives", "j" * 49])
def test_an_inference_service_cannot_reference_a_job_name_that_cannot_exist(cluster: Cluster, job: str) -> None:
    ref = {"model": {"checkpoint": None, "trainingJobRef": {"name": job}}}
    result = cluster.kubectl.apply(inference_service("served", "default", ref), "--dry-run=server", check=False)
    assert result.returncode != 0 and "spec.model.trainingJobRef.name" in result.stderr, result.stderr
