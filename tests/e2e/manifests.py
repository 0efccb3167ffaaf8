"""Valid manifests for the e2e tests, and a deep merge to derive variants (valid or not) from them."""

from __future__ import annotations

import copy
from typing import Any

DELETE = object()
"""Put as a value in an override to remove that key."""


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def training_job(name: str, namespace: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    base = {
        "model": {"preset": "moe-debug"},
        "data": {"source": "synthetic://code,math"},
        "training": {"steps": 100, "globalBatchSize": 16},
        "workers": {"replicas": 2, "gpusPerWorker": 0},
        "runPolicy": {"backoffLimit": 1},
    }
    return {
        "apiVersion": "moeops.dev/v1alpha1",
        "kind": "MoETrainingJob",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": merge(base, spec or {}),
    }


def inference_service(name: str, namespace: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    base = {"model": {"checkpoint": {"claimName": "models", "path": "/moe-debug"}}, "gpus": 0}
    return {
        "apiVersion": "moeops.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": merge(base, spec or {}),
    }
