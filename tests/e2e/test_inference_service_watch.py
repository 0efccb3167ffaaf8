"""An InferenceService waiting for its training job's checkpoint is served as soon as the checkpoint shows: the
operator follows the job's events instead of looking again every 30 s (real control plane)."""

from __future__ import annotations

import json
import time

from harness import Cluster, OperatorProcess, wait_for
from manifests import inference_service, training_job

JOBS, SERVICES = "moetrainingjobs", "inferenceservices"
PROMPT_S = 10.0
"""Well under the 30 s the service used to wait between two looks at its job."""


def test_the_service_is_served_when_its_job_appears_and_checkpoints(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    ref = {"model": {"checkpoint": None, "trainingJobRef": {"name": "later"}}}
    cluster.kubectl.apply(inference_service("waiting", namespace, ref))
    wait_for("ModelNotReady", lambda: "not found" in (cluster.condition(SERVICES, namespace, "waiting", "Ready") or {})
             .get("message", ""))  # fmt: skip

    storage = {"checkpoint": {"storage": {"claimName": "ckpt", "path": "/later"}}, "runPolicy": {"suspend": True}}
    cluster.kubectl.apply(training_job("later", namespace, storage))
    wait_for("no checkpoint yet", lambda: "no checkpoint yet" in (cluster.condition(SERVICES, namespace, "waiting",
             "Ready") or {}).get("message", ""), timeout=PROMPT_S)  # fmt: skip

    time.sleep(2)  # the rank 0 of a job writes its first checkpoint some time after the job appeared
    checkpoint = {"status": {"checkpoint": {"lastStep": 100, "location": "pvc://ckpt/later/step-00000100"}}}
    cluster.kubectl("patch", "mtj", "later", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(checkpoint))  # fmt: skip
    model = wait_for("the model served", lambda: cluster.status(SERVICES, namespace, "waiting").get("model"),
                     timeout=PROMPT_S)  # fmt: skip
    assert model == "pvc://ckpt/later"
    wait_for("the Deployment", lambda: cluster.read("Deployment", namespace, "waiting"), timeout=PROMPT_S)
