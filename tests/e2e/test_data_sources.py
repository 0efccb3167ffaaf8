"""`spec.data` on a real API server: every source scheme, format and filter setting the runtime cannot do is
refused at apply with a message naming the field (not at pod start with exit 78), what it reads is accepted, and
a `pvc://` source's claim reaches the worker pods read-only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job

NOT_YET = "s3://, gs:// and hf:// are not supported yet"

REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("s3 source", {"source": "s3://bucket/corpus"}, ["spec.data.source", NOT_YET]),
    ("gs source", {"source": "gs://bucket/corpus"}, ["spec.data.source", NOT_YET]),
    ("hf source", {"source": "hf://org/dataset"}, ["spec.data.source", NOT_YET]),
    ("parquet format", {"source": "pvc://corpus/v3", "format": "parquet"},
     ['spec.data.format: Unsupported value: "parquet"', 'supported values: "jsonl", "text"']),
    ("tokens format", {"source": "pvc://corpus/v3", "format": "tokens"},
     ['spec.data.format: Unsupported value: "tokens"']),
    ("a filter on the synthetic corpus", {"filter": {}},
     ["spec.data", "the filter stage reads jsonl from a PersistentVolumeClaim"]),
    ("a filter on text files", {"source": "pvc://corpus/v3", "format": "text", "filter": {"tasks": 2}},
     ["spec.data", "the filter stage reads jsonl from a PersistentVolumeClaim"]),
    ("a negative domain weight", {"source": "pvc://corpus/v3", "filter": {"domainWeights": {"code": -1, "prose": 1}}},
     ["spec.data.filter.domainWeights", "weights are not negative"]),
    ("level 3 without a reference", {"source": "pvc://corpus/v3", "filter": {"adversarialDrop": 0.1}},
     ["spec.data.filter", "adversarialDrop needs a reference"]),
    ("a reference without its threshold", {"source": "pvc://corpus/v3", "filter": {"reference": "/trusted"}},
     ["spec.data.filter", "reference and maxPerplexity go together"]),
    ("a claim that is no DNS name", {"source": "pvc://Corpus_1/v3"},
     ["spec.data.source", "a pvc source is pvc://<claim>/<path>"]),
    ("a file URI with a host", {"source": "file://data/corpus"}, ["spec.data.source", "three slashes"]),
    ("a parent segment", {"source": "pvc://corpus/../other"}, ["spec.data.source", "must not contain '..' segments"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data", "messages"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_the_trainer_cannot_read_is_refused_at_apply(
    cluster: Cluster, case: str, data: dict[str, Any], messages: list[str]
) -> None:
    result = cluster.kubectl.apply(training_job("bad-data", "default", {"data": data}), "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: accepted but the trainer cannot read it"
    for message in messages:
        assert message in result.stderr, f"{case}: {result.stderr}"


ACCEPTED: list[dict[str, Any]] = [
    {"source": "synthetic://all"},
    {"source": "file:///srv/corpus", "format": "text"},
    {"source": "pvc://corpus/v3/train", "format": "jsonl", "textField": "body"},
    {"source": "pvc://team.corpus"},
]


@pytest.mark.parametrize("data", ACCEPTED, ids=[d["source"] for d in ACCEPTED])
def test_what_the_trainer_reads_is_accepted(cluster: Cluster, data: dict[str, Any]) -> None:
    manifest = training_job("good-data", "default", {"data": data})
    result = cluster.kubectl.apply(manifest, "--dry-run=server", "-o", "json")
    stored = json.loads(result.stdout)["spec"]["data"]
    assert stored == {"format": "jsonl", "textField": "text", **data}  # defaults filled in, no filter


def test_the_workers_mount_the_data_claim_read_only(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    spec = {
        "data": {"source": "pvc://corpus/v3", "format": "text"},
        "checkpoint": {"storage": {"claimName": "ckpt", "path": "/run"}},
    }
    cluster.kubectl.apply(training_job("pvc-data", namespace, spec))
    job = wait_for("the worker Job", lambda: cluster.read("Job", namespace, "pvc-data"))
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "corpus", "readOnly": True}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "ckpt"
    assert not volumes["checkpoints"]["persistentVolumeClaim"].get("readOnly")  # the checkpoints stay writable
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["data"] == {"name": "data", "mountPath": "/data/corpus", "readOnly": True}
    config = wait_for("the ConfigMap", lambda: cluster.read("ConfigMap", namespace, "pvc-data-config"))
    assert json.loads(config["data"]["config.json"])["data"]["source"] == "pvc://corpus/v3"  # resolved by the trainer


def test_a_filter_with_every_level_is_accepted_on_a_claim(cluster: Cluster) -> None:
    """Integer weights too: CEL reads a `number` field as a double either way."""
    levels = {"tasks": 4, "reference": "/trusted", "maxPerplexity": 40, "adversarialDrop": 0.05,
              "domainWeights": {"code": 1, "prose": 2.5}}  # fmt: skip
    data = {"source": "pvc://corpus/v3", "filter": levels}
    result = cluster.kubectl.apply(
        training_job("filtered", "default", {"data": data}), "--dry-run=server", "-o", "json"
    )
    stored = json.loads(result.stdout)["spec"]["data"]["filter"]
    assert stored == {"enabled": True, **levels}
