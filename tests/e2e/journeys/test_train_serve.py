"""Journey (a): `kubectl apply` a MoETrainingJob → its pods train for real → Succeeded with progress, loss and
energy in its status → an InferenceService serving that job's checkpoint comes Ready → a completion is answered
through its Service. The examples are applied as a user applies them."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, wait_for

from moeops.data.synthetic import DOMAINS
from moeops.devcluster.node import local_service_address
from moeops.devcluster.platform import LocalPlatform
from moeops.devcluster.served_eval import served_exact_match

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.timeout(1800)
def test_apply_train_status_serve_answer(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns = journey_namespace
    for example in ("moe-checkpoints-pvc.yaml", "moe-debug-trainingjob.yaml"):
        journey_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / example))
    seen: list[dict[str, Any]] = []

    def succeeded() -> dict[str, Any] | None:
        platform.check()
        status = journey_cluster.status("moetrainingjobs", ns, "moe-debug")
        if status.get("progress"):
            seen.append(status)
        assert status.get("state") != "Failed", status
        return status if status.get("state") == "Succeeded" else None

    final = wait_for("moe-debug to succeed", succeeded, timeout=900, interval=2)
    running = [s["progress"] for s in seen if 0 < s["progress"].get("step", 0) < s["progress"]["totalSteps"]]
    assert running, f"no progress was reported while the job ran: {seen[-3:]}"
    assert any(p.get("loss") is not None and p.get("tokensPerSecond") for p in running), running[-3:]
    assert final["progress"]["step"] == final["progress"]["totalSteps"]
    carbon = wait_for("the job's energy", lambda: (journey_cluster.status("moetrainingjobs", ns, "moe-debug")
                                                   .get("carbon") or {}).get("energyJoules"), timeout=120)  # fmt: skip
    assert carbon > 0

    journey_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "moe-debug-inferenceservice.yaml"))

    def ready() -> dict[str, Any] | None:
        platform.check()
        status = journey_cluster.status("inferenceservices", ns, "moe-debug")
        return status if status.get("readyReplicas", 0) >= 1 else None

    wait_for("the InferenceService to be Ready", ready, timeout=300, interval=2)
    cluster_ip = journey_cluster.core.read_namespaced_service("moe-debug", ns).spec.cluster_ip
    body = json.dumps({"model": "moe-debug", "prompt": "rev:kubernetes|", "max_tokens": 12, "temperature": 0}).encode()
    request = urllib.request.Request(f"http://{local_service_address(cluster_ip)}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=60) as answer:
        completion = json.loads(answer.read())
    assert completion["choices"][0]["text"], completion
    assert completion["usage"]["completion_tokens"] >= 1
    assert time.monotonic() - started < 60
    # The example model visibly learned: held-out questions, answered through the Service as a client asks them.
    config = journey_cluster.core.read_namespaced_config_map("moe-debug-config", ns).data["config.json"]
    seed = int(json.loads(config)["training"].get("seed", 0))
    accuracy = served_exact_match(f"http://{local_service_address(cluster_ip)}", "moe-debug", DOMAINS, seed, 20)
    assert sum(score >= 0.9 for score in accuracy.values()) >= 4, accuracy
