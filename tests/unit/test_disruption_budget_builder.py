"""The PodDisruptionBudget of an InferenceService (pure): made when it may run two replicas or more, one pod at a
time, over exactly the Deployment's pods."""

from __future__ import annotations

from moeops.api.v1alpha1.inferenceservice import InferenceServiceSpec
from moeops.operator.children.disruption import disruption_budget
from moeops.operator.naming import Owner

OWNER = Owner("moeops.dev/v1alpha1", "InferenceService", "svc", "ns", "uid-1")
MODEL = {"checkpoint": {"claimName": "models", "path": "/m"}}


def spec(**replicas: int) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": MODEL, "replicas": replicas})


def test_a_budget_only_for_a_service_that_may_run_two_replicas_or_more() -> None:
    assert disruption_budget(OWNER, spec(min=1, max=1)) is None
    assert disruption_budget(OWNER, spec(min=0, max=1)) is None
    child = disruption_budget(OWNER, spec(min=1, max=4))  # autoscaled: may be at 1 now, a drain still proceeds
    assert child is not None and (child.api_version, child.kind, child.name) == (
        "policy/v1",
        "PodDisruptionBudget",
        "svc",
    )
    assert child.body["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"moeops.dev/inference-service": "svc"}},
    }
    (ref,) = child.body["metadata"]["ownerReferences"]
    assert ref["uid"] == "uid-1" and ref["controller"] is True
