"""The filter stage's pure parts in the operator: the filter Job it builds, and the status it derives from the Job
and task 0's termination message."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from moeops.api.v1alpha1 import MoETrainingJobSpec
from moeops.operator.children.data_filter import FILTER_CONTAINER, FILTER_OF_LABEL, filter_job
from moeops.operator.config import OperatorConfig
from moeops.operator.naming import TRAINING_JOB_LABEL, Owner
from moeops.operator.status.conditions import StatusUpdate
from moeops.operator.status.data_filter import filter_status, filtered_update, filtering_update

OWNER = Owner("moeops.dev/v1alpha1", "MoETrainingJob", "demo", "ml", "uid-1", 1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SUMMARY = {"documents": 52, "kept": 40, "level1": {"exact": 6, "near": 6, "quality": 0}, "malformed": 1}


def spec_with(filter_: dict[str, Any], source: str = "pvc://corpus/v1") -> MoETrainingJobSpec:
    return MoETrainingJobSpec.model_validate({
        "model": {"preset": "moe-debug"}, "data": {"source": source, "textField": "body", "filter": filter_},
        "training": {"steps": 10, "globalBatchSize": 8}, "workers": {"replicas": 1, "gpusPerWorker": 0},
    })  # fmt: skip


def test_the_filter_job_runs_the_pipeline_on_the_claim_it_may_write() -> None:
    body = filter_job(
        OWNER,
        spec_with(
            {
                "tasks": 3,
                "reference": "/trusted",
                "maxPerplexity": 30,
                "adversarialDrop": 0.05,
                "domainWeights": {"python": 1, "recipe": 3},
            }
        ),
        OperatorConfig(),
    ).body
    job = body["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 3
    assert TRAINING_JOB_LABEL not in body["metadata"]["labels"], "the worker-Job handler must never see it"
    assert body["metadata"]["labels"][FILTER_OF_LABEL] == "demo"
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == FILTER_CONTAINER and container["terminationMessagePolicy"] == "File"
    assert container["command"] == [
        "python", "-m", "moeops.datafilter.pipeline", "/data/corpus/v1", "/data/corpus/v1.filtered",
        "/data/corpus/v1.filtered/.work/uid-1", "--tasks", "3", "--text-field", "body",
        "--summary", "/dev/termination-log", "--reference", "/data/corpus/trusted", "--max-perplexity", "30.0",
        "--adversarial-drop", "0.05", "--domain-weight", "python=1.0", "--domain-weight", "recipe=3.0",
    ]  # fmt: skip
    assert {"name": "data", "mountPath": "/data/corpus"} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}} in pod["volumes"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]


def _job(*conditions: str, succeeded: int = 0) -> dict[str, Any]:
    return {"status": {"succeeded": succeeded, "conditions": [{"type": c, "status": "True", "message": f"{c}!"}
                                                              for c in conditions]}}  # fmt: skip


def _pod(index: str, message: str | None, phase: str = "Succeeded") -> dict[str, Any]:
    terminated = {"exitCode": 0, **({"message": message} if message else {})}
    statuses = [{"name": "filter", "state": {"terminated": terminated}}]
    annotations = {"batch.kubernetes.io/job-completion-index": index}
    return {"metadata": {"annotations": annotations}, "status": {"phase": phase, "containerStatuses": statuses}}


def test_the_status_follows_the_filter_job_and_reads_task_0s_counts() -> None:
    found = partial_status(_job(), [])
    assert found == {"tasks": 2, "succeeded": 0, "output": "pvc://c/v.filtered", "state": "Running"}
    pods = [_pod("1", None), _pod("0", json.dumps(SUMMARY))]
    done = partial_status(_job("Complete", succeeded=2), pods)
    assert done["state"] == "Succeeded"
    assert done["counts"] == {"documents": 52, "kept": 40, "exact": 6, "near": 6, "quality": 0, "malformed": 1}
    with_levels = {**SUMMARY, "level2": {"rebalance": 4}, "level3": {"adversarial": 2}}
    done3 = partial_status(_job("Complete", succeeded=2), [_pod("0", json.dumps(with_levels))])
    assert done3["counts"]["adversarial"] == 2 and done3["counts"]["rebalance"] == 4
    lost = partial_status(_job("Complete", succeeded=2), [_pod("0", "not json")])
    assert lost["state"] == "Succeeded" and "counts" not in lost
    failed = partial_status(_job("Failed"), pods)
    assert failed["state"] == "Failed" and failed["message"] == "Failed!"


def partial_status(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    return filter_status(job, pods, container="filter", output="pvc://c/v.filtered", tasks=2)


def test_filtering_then_filtered_then_a_failed_filter_finishes_the_job() -> None:
    running = partial_status(_job(), [])
    update = filtering_update({"state": "Pending"}, running, generation=1, now=NOW)
    assert update.patch["state"] == "Filtering" and update.patch["filter"] == running
    assert [e.reason for e in update.events] == ["Filtering"]
    assert filtering_update(update.patch, running, generation=1, now=NOW).events == [], "one event per change"
    done = partial_status(_job("Complete", succeeded=2), [_pod("0", json.dumps(SUMMARY))])
    training = StatusUpdate({"state": "Created", "conditions": []})
    filtered = filtered_update(training, update.patch, done, generation=1, now=NOW)
    (condition,) = [c for c in filtered.patch["conditions"] if c["type"] == "DataFiltered"]
    assert condition["status"] == "True" and "kept 40 of 52 documents" in condition["message"]
    assert filtered.patch["state"] == "Created" and [e.reason for e in filtered.events] == ["Filtered"]
    failed = filtering_update(update.patch, partial_status(_job("Failed"), []), generation=1, now=NOW)
    assert failed.patch["state"] == "Failed" and failed.patch["completionTime"]
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in failed.patch["conditions"])
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "FilterFailed")]


def test_no_filter_job_without_a_filter() -> None:
    spec = MoETrainingJobSpec.model_validate({
        "model": {"preset": "moe-debug"}, "data": {"source": "pvc://corpus/v1"},
        "training": {"steps": 10, "globalBatchSize": 8}, "workers": {"replicas": 1, "gpusPerWorker": 0},
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"needs spec\.data\.filter"):
        filter_job(OWNER, spec, OperatorConfig())
