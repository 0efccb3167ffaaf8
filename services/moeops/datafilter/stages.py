"""The four stages of level 1 as functions of (work folder, task): what an Indexed Job's pod or a local process
runs. Every stage reads only files earlier stages wrote and writes its own, named by stage and task (each file
written whole, then renamed into place, so a task that dies leaves no half file behind):

    work/config.json                         the plan (moeops.datafilter.config)
    work/signatures/task-<i>.<band>.npy      (key, doc) sorted, per band and for `exact`; task-<i>.docs.npy
                                             (file, byte offset) per ordinal; task-<i>.stats.json
    work/buckets/<band>.pairs.npy            (doc, doc) candidate pairs of the bands task k owns (b mod N = k)
    work/clusters/task-<i>.remove.npy        (ordinal, reason, duplicate_of) of task i's documents; stats.json
    work/reference/model.npz                 the quality model, when a reference and max_perplexity are set
    work/filter/task-<i>.stats.json          counts and examples; the survivors: <output>/part-<i>.jsonl
"""

from __future__ import annotations

import json
from array import array
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .adversarial import Classifier, featurize, fit_with_holdout
from .buckets import bucket_pairs, doc_ids, sort_keys, split_id
from .clusters import REASONS, removals
from .config import CONFIG_FILE, FilterConfig
from .domains import (
    assign,
    domain_summary,
    inverse_document_frequency,
    kept_by_hash,
    seeded_centroids,
    term_counts,
    tfidf,
)
from .drift import Profile, drift
from .minhash import band_keys, permutation_coefficients, signatures
from .normalise import exact_hash, normalise
from .quality import ByteNgramModel
from .reader import ReadStats, parse_text, read_shard, read_texts
from .shingles import batch_shingles

BATCH_BYTES = 1 << 16
"""Text shingled and signed per numpy batch: enough documents to amortise numpy's per-call cost, few enough that
the batch's arrays (about 40 bytes per byte of text) stay a few MiB."""
SNIPPET = 300
LEVEL1_REASONS = (*REASONS.values(), "quality")
ALL_REASONS = (*LEVEL1_REASONS, "adversarial", "rebalance")
DOMAINS_FILE = "domains/model.npz"
ADVERSARIAL_FILE = "adversarial/model.npz"
MODEL_FILE = "reference/model.npz"


def load_config(work: Path) -> FilterConfig:
    return FilterConfig.model_validate_json((work / CONFIG_FILE).read_text())


def write_config(work: Path, config: FilterConfig) -> None:
    _write_bytes(work / CONFIG_FILE, config.model_dump_json(indent=1).encode())


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def _write_array(path: Path, array: NDArray[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as out:
        np.save(out, array)
    partial.replace(path)


def _write_npz(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as out:
        np.savez(out, **arrays)
    partial.replace(path)


def _write_json(path: Path, data: object) -> None:
    _write_bytes(path, json.dumps(data, indent=1).encode())


def _task_file(stage: str, task: int, suffix: str) -> str:
    return f"{stage}/task-{task:05d}.{suffix}"


def run_signatures(work: Path, task: int) -> None:
    config = load_config(work)
    params = config.params()
    a, b = permutation_coefficients(params)
    stats = ReadStats()
    # array('Q'): 8 bytes a document, where a list of ints costs 40.
    exact = array("Q")
    where = array("Q")
    keys: list[NDArray[np.uint64]] = []
    batch: list[str] = []
    batch_bytes = 0
    for line in read_shard(config, task, stats):
        text = normalise(line.text)
        exact.append(exact_hash(text))
        where.extend((line.file, line.offset))
        batch.append(text)
        batch_bytes += len(line.raw)
        if batch_bytes >= BATCH_BYTES:
            keys.append(band_keys(signatures(*batch_shingles(batch, params.shingle), a, b), params))
            batch, batch_bytes = [], 0
    if batch:
        keys.append(band_keys(signatures(*batch_shingles(batch, params.shingle), a, b), params))
    docs = doc_ids(task, len(exact))
    band_columns = np.concatenate(keys) if keys else np.empty((0, params.bands), dtype=np.uint64)
    columns = [np.frombuffer(exact, dtype=np.uint64), *band_columns.T]
    for name, column in zip(config.band_names(), columns, strict=True):
        _write_array(work / _task_file("signatures", task, f"{name}.npy"), np.stack(sort_keys(column, docs), axis=1))
    _write_array(
        work / _task_file("signatures", task, "docs.npy"), np.frombuffer(where, dtype=np.uint64).reshape(-1, 2)
    )
    _write_json(work / _task_file("signatures", task, "stats.json"), stats.__dict__)


def run_buckets(work: Path, task: int) -> None:
    config = load_config(work)
    for band, name in enumerate(config.band_names()):
        if band % config.tasks != task:
            continue
        parts = [np.load(work / _task_file("signatures", t, f"{name}.npy")) for t in range(config.tasks)]
        merged = np.concatenate(parts)
        _write_array(work / "buckets" / f"{name}.pairs.npy", bucket_pairs(merged[:, 0].copy(), merged[:, 1].copy()))


def run_clusters(work: Path, task: int = 0) -> None:
    config = load_config(work)
    names = config.band_names()
    exact_pairs = np.load(work / "buckets" / f"{names[0]}.pairs.npy")
    near = [np.load(work / "buckets" / f"{name}.pairs.npy") for name in names[1:]]
    near_pairs = np.concatenate(near) if near else np.empty((0, 2), dtype=np.uint64)
    removed: list[list[list[int]]] = [[] for _ in range(config.tasks)]
    for removal in removals(exact_pairs, near_pairs):
        source, ordinal = split_id(removal.doc)
        removed[source].append([ordinal, removal.reason, removal.duplicate_of])
    for source, rows in enumerate(removed):
        _write_array(
            work / _task_file("clusters", source, "remove.npy"), np.array(rows, dtype=np.uint64).reshape(-1, 3)
        )
    _write_json(
        work / "clusters" / "stats.json",
        {"exact_pairs": len(exact_pairs), "near_pairs": len(near_pairs), "removed": sum(map(len, removed))},
    )


def run_reference(work: Path, task: int = 0) -> None:
    config = load_config(work)
    if not config.quality_filter():
        return
    texts = (normalise(text) for text in read_texts(config.reference, config.text_field))
    model = ByteNgramModel.train(texts, config.lm_order)
    _write_npz(work / MODEL_FILE, grams=model.grams, contexts=model.contexts, order=model.order)


def _load_model(work: Path) -> ByteNgramModel:
    with np.load(work / MODEL_FILE) as saved:
        return ByteNgramModel(int(saved["order"]), saved["grams"], saved["contexts"])


def run_adversarial(work: Path, task: int = 0) -> None:
    """Level 3's classifier: reference against a sample of the corpus (moeops.datafilter.adversarial)."""
    config = load_config(work)
    if not config.adversarial() or config.adversarial_drop is None:
        return
    sample = config.adversarial_sample
    reference = featurize(list(islice(read_texts(config.reference, config.text_field), sample)))
    candidate = featurize(list(islice(read_texts(config.inputs, config.text_field), sample)))
    model, held_out_auc, threshold = fit_with_holdout(reference, candidate, config.adversarial_drop, config.seed)
    _write_npz(work / ADVERSARIAL_FILE, weights=model.weights, bias=model.bias, threshold=threshold, auc=held_out_auc)


def _load_adversarial(work: Path) -> tuple[Classifier, float, float]:
    with np.load(work / ADVERSARIAL_FILE) as saved:
        model = Classifier(saved["weights"], float(saved["bias"]))
        return model, float(saved["threshold"]), float(saved["auc"])


def run_domains(work: Path, task: int = 0) -> None:
    """Level 2: domains seeded by the spec's words, fitted on a sample; what share of each to keep."""
    config = load_config(work)
    if config.domain_weights is None:
        return
    names = list(config.domain_weights)
    texts = list(islice(read_texts(config.inputs, config.text_field), config.domain_sample))
    counts = term_counts(texts)
    idf = inverse_document_frequency(counts)
    rows = tfidf(counts, idf)
    centroids = seeded_centroids(names, rows)
    summary = domain_summary(names, assign(rows, centroids), texts, config.domain_weights)
    keep = np.array([summary[name]["keep"] for name in names], dtype=np.float64)
    _write_npz(work / DOMAINS_FILE, idf=idf, centroids=centroids, keep=keep)
    _write_json(work / "domains" / "summary.json", summary)


def _location(config: FilterConfig, work: Path, doc: int) -> tuple[str, int]:
    source, ordinal = split_id(doc)
    file, offset = np.load(work / _task_file("signatures", source, "docs.npy"), mmap_mode="r")[ordinal].tolist()
    return config.inputs[file], offset


def _example(config: FilterConfig, work: Path, text: str, path: str, offset: int, duplicate_of: int) -> dict[str, Any]:
    kept_path, kept_offset = _location(config, work, duplicate_of)
    with Path(kept_path).open("rb") as kept:
        kept.seek(kept_offset)
        kept_text = parse_text(kept.readline(), config.text_field)
    return {
        "document": f"{path}@{offset}",
        "text": text[:SNIPPET],
        "duplicate_of": f"{kept_path}@{kept_offset}",
        "duplicate_of_text": kept_text[:SNIPPET],
    }


def run_filter(work: Path, task: int) -> None:
    config = load_config(work)
    remove = np.load(work / _task_file("clusters", task, "remove.npy"))
    by_ordinal = {int(row[0]): (int(row[1]), int(row[2])) for row in remove}
    counts = {"documents": 0, "kept": 0, **dict.fromkeys(ALL_REASONS, 0)}
    examples: dict[str, list[dict[str, Any]]] = {reason: [] for reason in ALL_REASONS}
    model = _load_model(work) if config.quality_filter() else None
    adversarial = _load_adversarial(work) if config.adversarial() else None
    domains = dict(np.load(work / DOMAINS_FILE)) if config.domain_weights is not None else None
    names = list(config.domain_weights or {})
    domain_kept = dict.fromkeys(names, 0)
    stats = ReadStats()
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    shard = output / f"part-{task:05d}.jsonl"
    partial = shard.with_name(f".{shard.name}.partial")
    with partial.open("wb") as out:
        for ordinal, line in enumerate(read_shard(config, task, stats)):
            counts["documents"] += 1
            if ordinal not in by_ordinal and model is not None and config.max_perplexity is not None:
                perplexity = model.perplexity(normalise(line.text))
                if perplexity > config.max_perplexity:
                    counts["quality"] += 1
                    if len(examples["quality"]) < config.examples:
                        where = f"{config.inputs[line.file]}@{line.offset}"
                        examples["quality"].append({"document": where, "text": line.text[:SNIPPET],
                                                    "perplexity": round(perplexity, 2)})  # fmt: skip
                    continue
            if ordinal not in by_ordinal and adversarial is not None:
                score = float(adversarial[0].scores(featurize([line.text]))[0])
                if score > adversarial[1]:
                    counts["adversarial"] += 1
                    if len(examples["adversarial"]) < config.examples:
                        where = f"{config.inputs[line.file]}@{line.offset}"
                        examples["adversarial"].append({"document": where, "text": line.text[:SNIPPET],
                                                        "score": round(score, 4)})  # fmt: skip
                    continue
            if ordinal not in by_ordinal and domains is not None:
                row = tfidf(term_counts([line.text]), domains["idf"])
                domain = int(assign(row, domains["centroids"])[0])
                if not kept_by_hash(line.text, float(domains["keep"][domain])):
                    counts["rebalance"] += 1
                    continue
                domain_kept[names[domain]] += 1
            if ordinal not in by_ordinal:
                counts["kept"] += 1
                out.write(line.raw if line.raw.endswith(b"\n") else line.raw + b"\n")
                continue
            reason_code, duplicate_of = by_ordinal[ordinal]
            reason = REASONS[reason_code]
            counts[reason] += 1
            if len(examples[reason]) < config.examples:
                path = config.inputs[line.file]
                examples[reason].append(_example(config, work, line.text, path, line.offset, duplicate_of))
    partial.replace(shard)
    if counts["documents"] != counts["kept"] + sum(counts[r] for r in ALL_REASONS):
        raise RuntimeError(f"task {task}: a document was neither kept nor removed with a reason: {counts}")
    _write_json(
        work / _task_file("filter", task, "stats.json"),
        {"counts": counts, "examples": examples, "read": stats.__dict__, "shard": str(shard), "domains": domain_kept},
    )


STAGE_FUNCTIONS = {
    "signatures": run_signatures,
    "buckets": run_buckets,
    "clusters": run_clusters,
    "reference": run_reference,
    "adversarial": run_adversarial,
    "domains": run_domains,
    "filter": run_filter,
}


def run_stage(work: Path, stage: str, task: int) -> None:
    config = load_config(work)
    if not 0 <= task < config.stage_tasks(stage):
        raise ValueError(f"stage {stage} has tasks 0..{config.stage_tasks(stage) - 1}, got {task}")
    STAGE_FUNCTIONS[stage](work, task)


def _level2(work: Path, config: FilterConfig, tasks: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
    kept = {name: sum(t["domains"][name] for t in tasks) for name in config.domain_weights or {}}
    total = sum(kept.values()) or 1
    return {"removed": counts["rebalance"], "domains": json.loads((work / "domains" / "summary.json").read_text()),
            "kept_share": {name: round(n / total, 4) for name, n in kept.items()}}  # fmt: skip


def _level3(work: Path, config: FilterConfig, counts: dict[str, int], examples: dict[str, Any]) -> dict[str, Any]:
    _, threshold, held_out_auc = _load_adversarial(work)
    return {"removed": counts["adversarial"], "drop": config.adversarial_drop, "threshold": round(threshold, 4),
            "auc_held_out": round(held_out_auc, 4), "examples": examples["adversarial"]}  # fmt: skip


def reference_drift(config: FilterConfig, shards: list[str]) -> dict[str, float | bool] | None:
    """How far the kept documents' lengths and words are from the reference's (moeops.datafilter.drift); None when
    nothing was kept."""
    kept = Profile.of(read_texts(shards, config.text_field))
    if not kept.documents:
        return None
    return drift(Profile.of(read_texts(config.reference, config.text_field)), kept)


def write_report(work: Path, timings_s: dict[str, float] | None = None) -> dict[str, Any]:
    """Merge the filter tasks' counts and examples into <output>/report.json (and return it)."""
    config = load_config(work)
    tasks = [json.loads((work / _task_file("filter", t, "stats.json")).read_text()) for t in range(config.tasks)]
    counts = {key: sum(t["counts"][key] for t in tasks) for key in tasks[0]["counts"]}
    examples = {reason: [e for t in tasks for e in t["examples"][reason]][: config.examples] for reason in ALL_REASONS}
    malformed = [m for t in tasks for m in t["read"]["malformed_examples"]][: config.examples]
    report = {
        "input": {"files": config.inputs, "bytes": sum(config.sizes), "documents": counts["documents"],
                  "malformed_lines": sum(t["read"]["malformed"] for t in tasks), "malformed_examples": malformed},
        "level1": {"dedup": {"exact": counts["exact"], "near": counts["near"],
                             "examples": {r: examples[r] for r in REASONS.values()}},
                   "quality": {"removed": counts["quality"], "max_perplexity": config.max_perplexity,
                               "reference": config.reference, "order": config.lm_order,
                               "examples": examples["quality"]} if config.quality_filter() else None,
                   "minhash": {"shingle": config.shingle, "bands": config.bands, "rows": config.rows,
                               "threshold": round(config.params().threshold(), 3)}},
        "level2": _level2(work, config, tasks, counts) if config.domain_weights is not None else None,
        "level3": _level3(work, config, counts, examples) if config.adversarial() else None,
        "kept": counts["kept"],
        "shards": [t["shard"] for t in tasks],
        "tasks": config.tasks,
        "clusters": json.loads((work / "clusters" / "stats.json").read_text()),
        "stage_seconds": timings_s or {},
        "drift": reference_drift(config, [t["shard"] for t in tasks]) if config.reference else None,
    }  # fmt: skip
    _write_json(Path(config.output) / "report.json", report)
    return report
