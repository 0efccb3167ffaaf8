"""One truth for what `spec.data` may say: every source scheme and format the CRD accepts is one the trainer reads,
and what the trainer cannot read the CRD refuses. The accepted sets are read from the CRD file the API server is
given (crds/), not from a second list, so a scheme or format added to the model without a reader fails here."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.api.v1alpha1.data import DataSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import RebalanceSpec, TrainingSpec
from moeops.data.documents import FILE_SUFFIX
from moeops.trainer.corpus import READERS, build_corpus
from moeops.trainer.errors import ConfigError

CRD = Path(__file__).resolve().parents[2] / "crds" / "moeops.dev_moetrainingjobs.yaml"
ARCH = Architecture(layers=1, d_model=16, heads=2, experts=2, top_k=1, ffn_hidden=16, vocab_size=512, seq_len=48)
REFUSED_SCHEMES = ("s3", "gs", "hf", "http", "https", "ftp")
REFUSED_FORMATS = ("parquet", "tokens", "csv")


def data_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schema: dict[str, Any] = spec["properties"]["data"]
    return schema


def crd_schemes() -> list[str]:
    pattern = data_schema()["properties"]["source"]["pattern"]
    found = re.fullmatch(r"\^\(([a-z|]+)\)://\.\+\$", pattern)
    assert found, f"the source pattern changed shape ({pattern}): teach this test to read it"
    return found.group(1).split("|")


def crd_formats() -> list[str]:
    formats: list[str] = data_schema()["properties"]["format"]["enum"]
    return formats


def samples(tmp: Path) -> dict[str, str]:
    """A readable source of each scheme (a scheme without one here fails the test: add its reader and sample)."""
    (tmp / "claims" / "corpus").mkdir(parents=True)
    for folder in (tmp / "image", tmp / "claims" / "corpus"):
        folder.mkdir(exist_ok=True)
        for fmt, suffix in FILE_SUFFIX.items():
            text = "the cat sat on the mat.\n\nthe dog ate the bone.\n"
            if fmt == "jsonl":
                text = "\n".join(json.dumps({"body": t}) for t in ("the cat sat on the mat.", "the dog ate it."))
            (folder / f"sample{suffix}").write_text(text)
    return {"synthetic": "synthetic://all", "file": f"file://{tmp}/image", "pvc": "pvc://corpus/"}


def runtime_config(tmp: Path, data: DataSpec) -> TrainingRuntimeConfig:
    return TrainingRuntimeConfig(
        job_name="contract",
        namespace="local",
        architecture=ARCH,
        training=TrainingSpec(steps=1, global_batch_size=2, precision="fp32"),
        data=data,
        plan=ParallelPlan(data=1, tensor=1, pipeline=1, expert=1, activation_checkpointing=False),
        world=WorldSpec(nnodes=1, nproc_per_node=1, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=1, keep=1, directory=str(tmp / "ckpt")),
        rebalance=RebalanceSpec(),
        carbon=CarbonSpec(),
    )


def test_the_trainer_has_a_reader_for_every_scheme_the_crd_accepts() -> None:
    assert set(crd_schemes()) == set(READERS)


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_every_accepted_scheme_and_format_builds_a_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    assert fmt in crd_formats()
    monkeypatch.setenv("MOEOPS_DATA_ROOT", str(tmp_path / "claims"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the token files (gettempdir() caches TMPDIR)
    sources = samples(tmp_path)
    for scheme in crd_schemes():
        assert scheme in sources, f"no sample source for the accepted scheme {scheme}://"
        data = DataSpec(source=sources[scheme], format=fmt, text_field="body")
        corpus = build_corpus(runtime_config(tmp_path, data))
        inputs, _ = corpus.rows(0, 0, 2, 2)
        assert inputs.shape == (2, ARCH.seq_len), (scheme, fmt)


def test_every_format_the_crd_accepts_has_a_reader() -> None:
    assert set(crd_formats()) == set(FILE_SUFFIX)


@pytest.mark.parametrize("scheme", REFUSED_SCHEMES)
def test_a_scheme_the_trainer_cannot_read_is_refused_by_the_model_and_the_trainer(tmp_path: Path, scheme: str) -> None:
    assert scheme not in crd_schemes()
    with pytest.raises(ValidationError, match=r"data\.source|should match pattern"):
        DataSpec(source=f"{scheme}://bucket/corpus")
    # A config that got past the schema some other way still fails as a configuration error (exit 78).
    config = runtime_config(tmp_path, DataSpec(source="synthetic://all"))
    smuggled = config.model_copy(update={"data": DataSpec.model_construct(source=f"{scheme}://bucket/corpus")})
    with pytest.raises(ConfigError, match=f"{scheme}://bucket/corpus'.*this trainer reads synthetic://"):
        build_corpus(smuggled)


@pytest.mark.parametrize("fmt", REFUSED_FORMATS)
def test_a_format_the_trainer_cannot_read_is_refused(fmt: str) -> None:
    assert fmt not in crd_formats() and fmt not in FILE_SUFFIX
    with pytest.raises(ValidationError, match="format"):
        DataSpec(source="file:///data", format=fmt)


def test_the_filter_needs_a_jsonl_source_on_a_claim_and_its_options_the_pipeline_takes() -> None:
    rules = {r["rule"] for r in data_schema()["x-kubernetes-validations"]}
    assert any("has(self.filter)" in rule and "pvc://" in rule for rule in rules)
    for source, fmt in (("synthetic://all", "jsonl"), ("file:///srv/c", "jsonl"), ("pvc://c/v3", "text")):
        with pytest.raises(ValidationError, match="the filter stage reads jsonl from a PersistentVolumeClaim"):
            DataSpec.model_validate({"source": source, "format": fmt, "filter": {}})
    with pytest.raises(ValidationError, match="reference and maxPerplexity go together"):
        DataSpec.model_validate({"source": "pvc://c/v3", "filter": {"reference": "/trusted"}})
    with pytest.raises(ValidationError, match="weights are not negative"):
        DataSpec.model_validate({"source": "pvc://c/v3", "filter": {"domainWeights": {"a": -1, "b": 2}}})
    with pytest.raises(ValidationError, match="adversarialDrop needs a reference"):
        DataSpec.model_validate({"source": "pvc://c/v3", "filter": {"adversarialDrop": 0.1}})
    spec = DataSpec.model_validate({"source": "pvc://c/v3/", "filter": {"tasks": 4, "reference": "/trusted",
                                                                        "maxPerplexity": 40}})  # fmt: skip
    assert spec.filter is not None and spec.filter.tasks == 4 and spec.filtered_source() == "pvc://c/v3.filtered"
    # What jobs stored under the first schema carry (its default): no filter, not an invalid spec.
    stored = {"enabled": False, "dedup": True, "minQuality": 0.0, "rebalanceDomains": True}
    assert DataSpec.model_validate({"source": "synthetic://all", "filter": stored}).filter is None
    assert DataSpec(source="synthetic://all").to_wire() == {"source": "synthetic://all", "format": "jsonl",
                                                             "textField": "text"}  # fmt: skip
