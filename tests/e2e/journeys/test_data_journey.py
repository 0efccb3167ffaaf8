"""A user's own data on a claim, filtered first: JSONL files put on a PersistentVolumeClaim (with copies, near
copies and garbage among them, and a trusted reference beside them), a job whose `data.source` is
`pvc://<claim>/<path>` and whose `data.filter` asks for level 1 (dedup and perplexity against the reference).
The filter runs as its own Indexed Job of real pods on the process node (state Filtering), writes its shards and
report.json next to the data on the claim, then the workers get the claim mounted read-only, train a tokenizer on
the kept documents, and the job Succeeds with that tokenizer kept next to its checkpoints."""

from __future__ import annotations

import json
import random
from typing import Any

from harness import Cluster, wait_for
from jobs import apply_with_claim, job_status, short_job, wait_done, worker_pods

from moeops.devcluster.node.volumes import claim_dir
from moeops.devcluster.platform import LocalPlatform

CLAIM = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "corpus"},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
ANIMALS, FOODS = ("cat", "dog", "owl", "fox"), ("fish", "corn", "mice", "plums")


def _sentences(hours: range) -> list[str]:
    return [f"the {a} eats {f} at {h} o'clock." for a in ANIMALS for f in FOODS for h in hours]


def _corpus() -> tuple[list[dict[str, Any]], int]:
    """192 sentences and 4 stories (the documents to keep), 8 re-cased copies of sentences, 4 stories with one
    word changed (near copies) and 4 lines of garbage; (records, how many to keep)."""
    texts = _sentences(range(1, 13))
    stories = [" ".join(texts[k * 12 : (k + 1) * 12]) for k in range(4)]
    copies = ["  " + t.upper() for t in texts[:8]]
    near = [s.replace("at 7 o'clock", "at 7 sharp") for s in stories]
    rng = random.Random(3)
    garbage = [" ".join("".join(rng.choices("qxzj#@%&0123456789", k=rng.randint(3, 8))) for _ in range(10))
               for _ in range(4)]  # fmt: skip
    documents = texts + stories + copies + near + garbage
    return [{"id": i, "body": text} for i, text in enumerate(documents)], len(texts) + len(stories)


def test_a_job_filters_then_trains_on_jsonl_files_of_its_claim(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns = journey_namespace
    journey_cluster.kubectl.apply(CLAIM, "-n", ns)
    claim = claim_dir(platform.node_state, ns, "corpus")
    folder = claim / "v1"
    folder.mkdir(parents=True)
    records, keep = _corpus()
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{broken\n")
    reference = "".join(json.dumps({"body": t}) + "\n" for t in _sentences(range(13, 25)))
    (claim / "reference.jsonl").write_text(reference)
    before = sorted(p.name for p in folder.iterdir())

    job = short_job("own-data", steps=20, interval=10)
    job["spec"]["model"]["vocabSize"] = 320  # a byte-level BPE tokenizer needs 258 at least
    level1 = {"tasks": 2, "reference": "/reference.jsonl", "maxPerplexity": 40}
    job["spec"]["data"] = {"source": "pvc://corpus/v1", "format": "jsonl", "textField": "body", "filter": level1}
    apply_with_claim(journey_cluster, ns, job)

    def in_state(state: str) -> dict[str, Any] | None:
        status = job_status(platform, journey_cluster, ns, "own-data")
        return status if status.get("state") == state else None

    filtering = wait_for("own-data to filter", lambda: in_state("Filtering"), timeout=300, interval=1)
    assert filtering["filter"]["tasks"] == 2 and filtering["filter"]["output"] == "pvc://corpus/v1.filtered"
    assert not worker_pods(journey_cluster, ns, "own-data"), "no workers while filtering"
    wait_for("own-data to run", lambda: job_status(platform, journey_cluster, ns, "own-data").get("state")
             in ("Running", "Succeeded", "Failed"), timeout=600, interval=1)  # fmt: skip
    status = wait_done(platform, journey_cluster, ns, "own-data", timeout=600)
    assert status["state"] == "Succeeded", status

    counts = status["filter"]["counts"]
    assert counts == {"documents": len(records), "kept": keep, "exact": 8, "near": 4, "quality": 4, "malformed": 1,
                      "rebalance": 0, "adversarial": 0}, status["filter"]  # fmt: skip
    reasons = {e["reason"] for e in journey_cluster.events(ns, "own-data")}
    assert {"Filtering", "Filtered"} <= reasons, reasons
    output = claim / "v1.filtered"
    report = json.loads((output / "report.json").read_text())
    examples = report["level1"]["dedup"]["examples"]
    assert examples["exact"] and examples["near"] and report["level1"]["quality"]["examples"], report["level1"]
    assert all(e["perplexity"] > 40 for e in report["level1"]["quality"]["examples"])
    kept = [json.loads(line)["id"] for shard in output.glob("part-*.jsonl") for line in shard.read_text().splitlines()]
    assert sorted(kept) == list(range(keep)), "exactly the sentences and the stories are kept"
    drift = journey_cluster.condition("moetrainingjobs", ns, "own-data", "DataDrift")
    assert drift is not None and drift["status"] == str(report["drift"]["drifted"]), (drift, report["drift"])

    kept_tokenizer = claim_dir(platform.node_state, ns, "moe-checkpoints") / "own-data" / "tokenizer.json"
    assert kept_tokenizer.is_file(), "the tokenizer trained on the kept documents is kept with the checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == before  # the filter writes beside the data, not into it
    for pod in worker_pods(journey_cluster, ns, "own-data"):
        mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["/data/corpus"]["readOnly"] is True
        logs = journey_cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout
        assert f"data pvc://corpus/v1.filtered (jsonl): {keep} documents" in logs, logs[-3000:]
