"""A child the API server refuses is visible on the owner (real control plane): a `ChildRejected` condition with the
API server's message and one Warning event from the operator, no retry loop, and a fresh try when the spec changes.

The refusal comes from a ValidatingAdmissionPolicy, as a cluster's policy engine would refuse a child: whatever the
CRD can check is refused at apply already (test_apply_refusals.py), a policy it cannot see."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from admission_policy import in_force, refusing
from harness import Cluster, OperatorProcess, wait_for
from manifests import inference_service, merge, training_job
from test_training_lifecycle import PLURAL, wait_condition

from moeops.operator.naming import OPERATOR_NAME

NAME = "refused"
POLICY_MESSAGE = "the cluster's policy refuses this worker Job"


@pytest.fixture
def refusing_policy(cluster: Cluster, namespace: str) -> Iterator[list[dict[str, Any]]]:
    with refusing(cluster, namespace, "jobs", NAME, POLICY_MESSAGE) as objects:
        yield objects


def rejected_events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(namespace, NAME) if e["reason"] == "ChildRejected"]


def test_a_refused_worker_job_is_a_condition_and_one_warning(
    cluster: Cluster, operator: OperatorProcess, namespace: str, refusing_policy: list[dict[str, Any]]
) -> None:
    manifest = training_job(NAME, namespace)
    cluster.kubectl.apply(manifest)
    condition = wait_condition(cluster, namespace, NAME, "ChildRejected")
    assert condition["reason"] == "ChildRejected"
    assert POLICY_MESSAGE in condition["message"] and f"create Job {namespace}/{NAME}" in condition["message"]
    assert cluster.status(PLURAL, namespace, NAME)["state"] == "Pending"
    (event,) = wait_for("the Warning event", lambda: rejected_events(cluster, namespace))
    assert event["type"] == "Warning" and POLICY_MESSAGE in event["message"]
    assert event["source"]["component"] == OPERATOR_NAME and event["reportingComponent"] == OPERATOR_NAME

    time.sleep(5)  # no retry loop: the same children would be refused again
    assert len(rejected_events(cluster, namespace)) == 1
    assert cluster.read("Job", namespace, NAME) is None

    # An edit is a new try; refused for the same reason, it posts no second event.
    cluster.kubectl.apply(merge(manifest, {"spec": {"runPolicy": {"backoffLimit": 2}}}))
    wait_for("the edit reconciled", lambda: (cluster.condition(PLURAL, namespace, NAME, "ChildRejected") or {}).get(
        "observedGeneration") == 2)  # fmt: skip
    assert len(rejected_events(cluster, namespace)) == 1

    # The policy lifted, the next edit goes through and clears the condition.
    for obj in refusing_policy:
        cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"])
    wait_for("the policy lifted", lambda: not in_force(cluster, namespace, "jobs", NAME, POLICY_MESSAGE))
    cluster.kubectl.apply(merge(manifest, {"spec": {"runPolicy": {"backoffLimit": 3}}}))
    wait_for("the worker Job", lambda: cluster.read("Job", namespace, NAME))
    cleared = wait_condition(cluster, namespace, NAME, "ChildRejected", status="False")
    assert cleared["reason"] == "ChildrenAccepted"
    created = wait_condition(cluster, namespace, NAME, "Created")
    assert created["status"] == "True"
    on_the_job = [e for e in cluster.events(namespace, NAME) if e["involvedObject"]["kind"] == "MoETrainingJob"]
    assert {e["source"].get("component") for e in on_the_job} == {OPERATOR_NAME}, json.dumps(on_the_job)[:2000]
    assert {"ChildRejected", "ChildrenCreated"} <= {e["reason"] for e in on_the_job}


def test_a_refused_server_deployment_is_a_condition_and_a_warning_on_the_inference_service(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    message = "the cluster's policy refuses this model server"
    with refusing(cluster, namespace, "deployments", "guarded", message, label="moeops.dev/inference-service"):
        cluster.kubectl.apply(inference_service("guarded", namespace))
        condition = wait_for("ChildRejected", lambda: (c := cluster.condition("inferenceservices", namespace,
                             "guarded", "ChildRejected")) and c["status"] == "True" and c)  # fmt: skip
    assert message in condition["message"] and f"create Deployment {namespace}/guarded" in condition["message"]
    events = [e for e in cluster.events(namespace, "guarded") if e["involvedObject"]["kind"] == "InferenceService"]
    (event,) = [e for e in events if e["reason"] == "ChildRejected"]
    assert event["type"] == "Warning" and event["source"]["component"] == OPERATOR_NAME
