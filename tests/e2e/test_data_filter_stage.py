"""`spec.data.filter` on a real control plane: the operator runs the filter as its own Indexed Job first (state
Filtering, no worker Job yet), reads the counts per level from task 0's termination message, and only then creates
the workers, on the filtered shards next to the data: Filtering -> Running -> Succeeded.

There is no node here: the test is the kubelet. It runs each filter pod's own container command as a process (the
claim's mount path mapped to a folder here, the completion index from the pod's annotation), then writes the
pod's terminated status with the exit code and the termination message the process left, as a kubelet would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job
from test_training_lifecycle import event_reasons, wait_condition, wait_pods, wait_state

from datafilter_corpus import corpus
from moeops.devcluster import FakeKubelet

FILTER_OF = "moeops.dev/data-filter-of"
INDEX = "batch.kubernetes.io/job-completion-index"


def _filter_pods(cluster: Cluster, ns: str, name: str, count: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        items = cluster.list("Pod", ns, f"{FILTER_OF}={name}")
        return items if len(items) == count else None

    return wait_for(f"{count} filter pods", found, timeout=90)


def _as_a_kubelet(cluster: Cluster, kubelet: FakeKubelet, pods: list[dict[str, Any]], claim_dir: Path,
                  tmp: Path) -> None:  # fmt: skip
    """Run the pods' containers as processes at once (the tasks wait for each other), then report how each ended."""
    running = []
    for pod in pods:
        kubelet.run(pod)
        container = pod["spec"]["containers"][0]
        command = [arg.replace("/data/corpus", str(claim_dir)) for arg in container["command"]]
        assert command[:3] == ["python", "-m", "moeops.datafilter.pipeline"], command
        message = tmp / f"termination-{pod['metadata']['name']}"
        command[command.index("--summary") + 1] = str(message)
        index = pod["metadata"]["annotations"][INDEX]
        proc = subprocess.Popen([sys.executable, *command[1:]], env={**os.environ, "JOB_COMPLETION_INDEX": index})
        running.append((pod, proc, message))
    for pod, proc, message in running:
        code = proc.wait(timeout=120)
        now = "2026-01-01T00:00:00Z"
        terminated: dict[str, Any] = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                      "startedAt": now, "finishedAt": now}  # fmt: skip
        if message.exists():
            terminated["message"] = message.read_text()
        status = {"phase": "Succeeded" if code == 0 else "Failed",
                  "containerStatuses": [{"name": "filter", "ready": False, "restartCount": 0, "image": "fake",
                                         "imageID": "", "state": {"terminated": terminated}}]}  # fmt: skip
        cluster.core.patch_namespaced_pod_status(
            pod["metadata"]["name"], pod["metadata"]["namespace"], {"status": status}, _preload_content=False
        )


def test_the_filter_runs_as_its_own_job_then_the_workers_train_on_its_shards_to_success(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str, tmp_path: Path
) -> None:
    claim_dir = tmp_path / "claim"
    claim_dir.mkdir()
    kinds = corpus(claim_dir / "v1")
    data = {"source": "pvc://corpus/v1", "format": "jsonl", "filter": {"tasks": 2}}
    cluster.kubectl.apply(training_job("filtered", namespace, {"data": data, "workers": {"replicas": 1}}))

    status = wait_state(cluster, namespace, "filtered", "Filtering")
    assert status["filter"]["state"] == "Running" and status["filter"]["tasks"] == 2
    assert status["filter"]["output"] == "pvc://corpus/v1.filtered"
    job = wait_for("the filter Job", lambda: cluster.read("Job", namespace, "filtered-data-filter"))
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == 2
    volume = job["spec"]["template"]["spec"]["volumes"][0]
    assert volume == {"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}}, "the filter writes: read-write"
    assert cluster.read("Job", namespace, "filtered") is None, "no workers while filtering"

    _as_a_kubelet(cluster, kubelet, _filter_pods(cluster, namespace, "filtered", 2), claim_dir, tmp_path)

    (worker,) = wait_pods(cluster, namespace, "filtered", 1)
    kubelet.run(worker)
    status = wait_state(cluster, namespace, "filtered", "Running")
    assert status["filter"]["state"] == "Succeeded" and "counts" in status["filter"], status["filter"]
    counts = status["filter"]["counts"]
    assert counts == {"documents": 52, "kept": 40, "exact": 6, "near": 6, "quality": 0, "malformed": 1,
                      "rebalance": 0, "adversarial": 0}  # fmt: skip
    filtered = wait_condition(cluster, namespace, "filtered", "DataFiltered")
    assert "kept 40 of 52 documents" in filtered["message"]
    assert {"Filtering", "Filtered"} <= event_reasons(cluster, namespace, "filtered")
    # The workers read the filtered shards, as a plain jsonl source on the same claim (mounted read-only).
    config_map = cluster.read("ConfigMap", namespace, "filtered-config")
    assert config_map is not None
    config = json.loads(config_map["data"]["config.json"])
    assert config["data"]["source"] == "pvc://corpus/v1.filtered" and not config["data"].get("filter")
    kept = [json.loads(line)["id"] for shard in sorted((claim_dir / "v1.filtered").glob("part-*.jsonl"))
            for line in shard.read_text().splitlines()]  # fmt: skip
    assert sorted(kept) == sorted(i for i, kind in kinds.items() if kind == "original")
    report = json.loads((claim_dir / "v1.filtered" / "report.json").read_text())
    assert report["level1"]["dedup"]["exact"] == 6 and report["level1"]["dedup"]["examples"]["near"]

    kubelet.finish(worker, exit_code=0)
    done = wait_state(cluster, namespace, "filtered", "Succeeded")
    assert done["filter"]["counts"] == counts, "the filter's outcome stays on the finished job"
