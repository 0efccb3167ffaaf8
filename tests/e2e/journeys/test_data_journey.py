"""A user's own data on a claim: JSONL files put on a PersistentVolumeClaim, a job whose `data.source` is
`pvc://<claim>/<path>`; the workers on the process node get the claim mounted read-only, train a tokenizer on its
documents, and the job Succeeds with that tokenizer kept next to its checkpoints."""

from __future__ import annotations

import json

from harness import Cluster
from jobs import apply_with_claim, short_job, wait_done, worker_pods

from moeops.devcluster.node.volumes import claim_dir
from moeops.devcluster.platform import LocalPlatform

CLAIM = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "corpus"},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip


def test_a_job_trains_on_jsonl_files_of_its_claim(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns = journey_namespace
    journey_cluster.kubectl.apply(CLAIM, "-n", ns)
    folder = claim_dir(platform.node_state, ns, "corpus") / "v1"
    folder.mkdir(parents=True)
    animals, foods = ("cat", "dog", "owl", "fox"), ("fish", "corn", "mice", "plums")
    texts = [f"the {a} eats {f} at {h} o'clock." for a in animals for f in foods for h in range(1, 13)]
    records = [{"id": i, "body": text} for i, text in enumerate(texts)]
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before = sorted(p.name for p in folder.iterdir())

    job = short_job("own-data", steps=20, interval=10)
    job["spec"]["model"]["vocabSize"] = 320  # a byte-level BPE tokenizer needs 258 at least
    job["spec"]["data"] = {"source": "pvc://corpus/v1", "format": "jsonl", "textField": "body"}
    apply_with_claim(journey_cluster, ns, job)
    status = wait_done(platform, journey_cluster, ns, "own-data", timeout=600)
    assert status["state"] == "Succeeded", status

    kept = claim_dir(platform.node_state, ns, "moe-checkpoints") / "own-data" / "tokenizer.json"
    assert kept.is_file(), "the tokenizer trained on the claim's documents is kept with the checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written next to the data
    for pod in worker_pods(journey_cluster, ns, "own-data"):
        mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["/data/corpus"]["readOnly"] is True
        logs = journey_cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout
        assert f"data pvc://corpus/v1 (jsonl): {len(records)} documents" in logs, logs[-3000:]
