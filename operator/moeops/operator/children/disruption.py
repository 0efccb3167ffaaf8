"""InferenceService → PodDisruptionBudget: a drain or an eviction takes its model servers down one at a time."""

from __future__ import annotations

from moeops.api.v1alpha1.inferenceservice import InferenceServiceSpec

from ..naming import INFERENCE_SERVICE_LABEL, Owner, metadata, serving_labels
from .child import Child

API_VERSION, KIND = "policy/v1", "PodDisruptionBudget"


def disruption_budget(owner: Owner, spec: InferenceServiceSpec) -> Child | None:
    """`maxUnavailable: 1` over the service's pods when it may run two replicas or more (`spec.replicas.max`: the
    autoscaler moves the count between min and max); None below that. maxUnavailable rather than minAvailable:
    with one replica running (scaled down, or not yet up) a node drain still proceeds instead of waiting for ever."""
    if spec.replicas.max < 2:
        return None
    labels = serving_labels(owner.name)
    budget_spec = {"maxUnavailable": 1, "selector": {"matchLabels": {INFERENCE_SERVICE_LABEL: owner.name}}}
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata(owner, owner.name, labels),
            "spec": budget_spec}  # fmt: skip
    return Child(body, managed={"metadata": {"labels": labels}, "spec": budget_spec})
