"""A ValidatingAdmissionPolicy that refuses one training job's objects of one kind, as a cluster's policy engine
would: what the CRD cannot see, for the tests of what the operator shows when a child (or a pod) is refused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness import Cluster, wait_for

LABEL = "moeops.dev/training-job"
GROUPS = {"jobs": "batch", "pods": "", "deployments": "apps"}


def policy(namespace: str, resource: str, job: str, message: str, label: str = LABEL) -> list[dict[str, Any]]:
    """The policy and its binding: CREATE of `resource` (jobs, pods or deployments) labelled `label: job` is refused."""
    name = f"refuse-{resource}-{namespace}"
    rule = {"apiGroups": [GROUPS[resource]], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": [resource]}
    key = f"'{label}'"
    expression = (f"!has(object.metadata.labels) || !({key} in object.metadata.labels)"
                  f" || object.metadata.labels[{key}] != '{job}'")  # fmt: skip
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [rule]},
                "validations": [{"expression": expression, "message": message, "reason": "Invalid"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            },
        },
    ]


def probe(namespace: str, resource: str, job: str, label: str = LABEL) -> dict[str, Any]:
    """An object the policy refuses once it is in force (applied with --dry-run=server)."""
    # Restricted Pod Security (the test namespaces enforce it) would refuse a plain pod before the policy is asked.
    secure = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    container = {"name": "c", "image": "busybox", "securityContext": secure}
    pod = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
           "containers": [container]}  # fmt: skip
    meta = {"name": "probe", "namespace": namespace, "labels": {label: job}}
    if resource == "pods":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod}
    if resource == "deployments":
        selector = {"matchLabels": {label: job}}
        template = {"metadata": {"labels": {label: job}}, "spec": pod}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                "spec": {"selector": selector, "template": template}}  # fmt: skip
    template = {"spec": {"restartPolicy": "Never", **pod}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"template": template}}


def in_force(cluster: Cluster, namespace: str, resource: str, job: str, message: str, label: str = LABEL) -> bool:
    result = cluster.kubectl.apply(probe(namespace, resource, job, label), "--dry-run=server", check=False)
    return result.returncode != 0 and message in result.stderr


@contextmanager
def refusing(
    cluster: Cluster, namespace: str, resource: str, job: str, message: str, label: str = LABEL
) -> Iterator[list[dict[str, Any]]]:
    """The policy in force for the duration (the API server takes a moment to load it); removed after."""
    objects = policy(namespace, resource, job, message, label)
    for obj in objects:
        cluster.kubectl.apply(obj)
    try:
        wait_for("the admission policy in force", lambda: in_force(cluster, namespace, resource, job, message, label),
                 timeout=30)  # fmt: skip
        yield objects
    finally:
        for obj in objects:
            cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False)
