"""`moeops train` on a `pvc://` source, as a worker pod reads it: the claim is a folder under the data root
(MOEOPS_DATA_ROOT here, /data in a pod), the text under a configurable jsonl field, the tokenizer trained and the
documents tokenized once per node into files every rank of the node reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_runs import TINY, losses, train, train_env, write_config

pytestmark = pytest.mark.slow  # each test runs `moeops train` (torchrun and its workers)


def write_claim(root: Path) -> None:
    """Two jsonl files on the claim `corpus` under /v3, the text under "body"."""
    folder = root / "corpus" / "v3"
    folder.mkdir(parents=True)
    animals, foods = ("cat", "dog", "owl", "fox"), ("fish", "corn", "mice", "plums")
    for part, animal_group in enumerate((animals[:2], animals[2:])):
        records = [{"id": f"{a}-{f}-{h}", "body": f"the {a} eats {f} at {h} o'clock."}
                   for a in animal_group for f in foods for h in range(1, 13)]  # fmt: skip
        (folder / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def with_text_field(config: Path, field: str) -> Path:
    raw = json.loads(config.read_text())
    raw["data"]["textField"] = field
    config.write_text(json.dumps(raw))
    return config


def test_a_pvc_source_trains_like_the_same_files_named_by_path(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    write_claim(claims)
    arch = TINY.model_copy(update={"vocab_size": 320})
    runs = {}
    for name, source, ranks in (("pvc", "pvc://corpus/v3", 2), ("file", f"file://{claims}/corpus/v3", 1)):
        run_dir, scratch = tmp_path / name, tmp_path / f"{name}-tmp"
        run_dir.mkdir()
        scratch.mkdir()
        config = with_text_field(write_config(run_dir, data=ranks, arch=arch, source=source), "body")
        result = train(config, ranks, env=train_env(MOEOPS_DATA_ROOT=str(claims), TMPDIR=str(scratch)))
        assert result.returncode == 0, result.stderr[-3000:]
        kinds = (p.name.split(".", 1)[1] for p in (scratch / "moeops-tokens").iterdir())
        cache = sorted(kind for kind in kinds if kind != "lock")
        assert cache == ["json", "tokenizer.json", "tokens"], cache  # both ranks of the pvc run share one of each
        runs[name] = losses(run_dir)
    for step, loss in runs["file"].items():  # the same documents, tokens and batches: one scheme or the other
        assert runs["pvc"][step] == pytest.approx(loss, rel=1e-4), (step, runs)


def test_a_pvc_source_that_is_not_there_is_a_configuration_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, source="pvc://corpus/nowhere")
    result = train(config, 1, env=train_env(MOEOPS_DATA_ROOT=str(tmp_path / "claims")))
    assert result.returncode == 78, result.stderr[-2000:]
    assert f"data path {tmp_path}/claims/corpus/nowhere does not exist" in result.stderr
