"""Every manifest in examples/ applies as a user would apply it, and the operator reconciles it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import yaml
from harness import Cluster, OperatorProcess, wait_for

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_examples_are_reconciled(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    assert EXAMPLES, "examples/ is empty"
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES[0].parent))
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            name, kind = doc["metadata"]["name"], doc["kind"]
            if kind == "PersistentVolumeClaim":
                continue
            if kind == "MoETrainingJob":
                status = wait_for(
                    f"{name} to be planned",
                    partial(cluster.status_if, "moetrainingjobs", namespace, name, lambda s: s.get("plan")),
                )
                assert status["state"] in ("Created", "Suspended"), status
                assert cluster.read("Job", namespace, name) is not None
            elif kind == "InferenceService" and "trainingJobRef" in doc["spec"]["model"]:
                # Its job has trained nothing here (no pods run): the service says it waits for the model.
                ready = wait_for(
                    f"{name} to wait for its job's checkpoint",
                    partial(cluster.condition, "inferenceservices", namespace, name, "Ready"),
                )
                assert ready["status"] == "False" and ready["reason"] == "ModelNotReady", ready
                assert cluster.read("Deployment", namespace, name) is None
            elif kind == "InferenceService":
                wait_for(f"{name}'s Deployment", partial(cluster.read, "Deployment", namespace, name))
