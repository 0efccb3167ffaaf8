"""The `data` section of a MoETrainingJob: where the training text comes from and how it is read.

The schema accepts only what the runtime reads today, so a spec the trainer would refuse at pod start (exit 78)
is refused at apply instead, with a message naming the field. A test ties the accepted sets to the trainer's
readers (tests/unit/test_data_spec_contract.py): a scheme or format added here without a reader fails it.
Object stores (s3://, gs://), hf:// and the parquet/tokens formats come back when a reader exists for them.
`filter` runs the data filter's level 1 as a stage before training (docs/architecture.md, "The data filter stage").
"""

from __future__ import annotations

import posixpath
import re
from typing import Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common import ABSOLUTE_PATH_PATTERN, NO_PARENT_SEGMENTS_RULE, KubeModel, cel, reject_parent_segments

DATA_SCHEMES = ("synthetic", "file", "pvc")
"""Source URI schemes the trainer reads (moeops.trainer.corpus)."""

DataFormat = Literal["jsonl", "text"]
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)

DATA_MOUNT_ROOT = "/data"
"""Where the operator mounts a `pvc://<claim>/...` source's claim in a worker, read-only: `/data/<claim>`. A
local run sets MOEOPS_DATA_ROOT (moeops.api.env.DATA_ROOT) to a folder holding one folder per claim."""

_CLAIM = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
SOURCE_PATTERN = rf"^({'|'.join(DATA_SCHEMES)})://.+$"
PVC_SOURCE_PATTERN = rf"^pvc://{_CLAIM}(/.*)?$"
FILE_SOURCE_PATTERN = r"^file:///.*$"


def _cel_string(regex: str) -> str:
    """A regex as a CEL single-quoted string literal (CEL, like Python, reads a backslash as an escape)."""
    return "'" + regex.replace("\\", "\\\\") + "'"


_SOURCE_RULES = [
    cel(
        f"self.matches({_cel_string(SOURCE_PATTERN)})",
        "data.source: this version reads synthetic://, file:/// (inside the image) and pvc://<claim>/<path>;"
        " s3://, gs:// and hf:// are not supported yet: copy the data to a PersistentVolumeClaim",
    ),
    cel(
        f"!self.startsWith('pvc://') || self.matches({_cel_string(PVC_SOURCE_PATTERN)})",
        "data.source: a pvc source is pvc://<claim>/<path>, the claim a DNS subdomain (lowercase) in the job's"
        " namespace",
    ),
    cel(
        f"!self.startsWith('file://') || self.matches({_cel_string(FILE_SOURCE_PATTERN)})",
        "data.source: a file source is file:///<absolute path inside the image> (three slashes: file://x/y"
        " names the host x)",
    ),
    cel(
        "!self.contains('/../') && !self.endsWith('/..')",
        "data.source: the path must not contain '..' segments",
    ),
]


FILTER_OUTPUT_SUFFIX = ".filtered"
"""The filtered corpus goes next to the data: `pvc://c/v3` is filtered into `pvc://c/v3.filtered` (shards and
report.json), and the workers train on that."""

FILTER_NEEDS = (
    "data.filter: the filter stage reads jsonl from a PersistentVolumeClaim and writes the filtered shards next to"
    " it: use a pvc://<claim>/<path> source with format jsonl"
)
QUALITY_PAIR = "data.filter: reference and maxPerplexity go together (the quality model and its threshold)"
ADVERSARIAL_NEEDS = "data.filter: adversarialDrop needs a reference (the classifier tells the corpus from it)"
DOMAIN_WEIGHTS_RULE = cel(
    "self.all(k, self[k] >= 0.0) && self.exists(k, self[k] > 0.0)",
    "data.filter.domainWeights: weights are not negative and one at least is above 0",
)


class DataFilterSpec(KubeModel):
    """The data filter run before training, as its own Indexed Job over the corpus (moeops.datafilter.pipeline):
    level 1 (exact and MinHash near-duplicate removal; with a reference, a perplexity threshold under a byte
    n-gram model trained on it) and level 3 (adversarial validation against the reference). The workers then train
    on the filtered shards."""

    enabled: bool = Field(default=True, description="Run the filter stage before training (false: as if unset).")
    tasks: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Parallel pods of the filter Job (they run at once and wait for each other between stages).",
    )
    reference: str | None = Field(
        default=None,
        min_length=2,
        max_length=1024,
        pattern=ABSOLUTE_PATH_PATTERN,
        description="Trusted text (a .jsonl file or folder) on the source's claim, as a path inside the claim: the"
        " quality model is trained on it. With maxPerplexity.",
        json_schema_extra={"x-kubernetes-validations": [NO_PARENT_SEGMENTS_RULE]},
    )
    max_perplexity: float | None = Field(
        default=None,
        gt=1.0,
        description="Documents whose perplexity under the reference's model exceeds this are dropped. With reference.",
    )

    adversarial_drop: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Level 3 (adversarial validation): drop this share of the corpus that a classifier trained to"
        " tell it from the reference finds least like it (0.05 = 5%), with examples in the report. Needs reference.",
    )

    domain_weights: dict[str, float] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Level 2: the domain mix to move toward, one entry per domain named by a seed word (its TF-IDF"
        " cluster starts there), e.g. {python: 0.3, recipe: 0.7}. Over-represented domains are thinned; the report"
        " shows each domain's share, keep share and word co-occurrence graph.",
        json_schema_extra={"x-kubernetes-validations": [DOMAIN_WEIGHTS_RULE]},
    )

    _no_parent_segments = field_validator("reference")(reject_parent_segments)

    @field_validator("domain_weights")
    @classmethod
    def _weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and (any(w < 0 for w in value.values()) or not sum(value.values()) > 0):
            raise ValueError(DOMAIN_WEIGHTS_RULE["message"])
        return value

    @model_validator(mode="after")
    def _quality_pair(self) -> DataFilterSpec:
        if (self.reference is None) != (self.max_perplexity is None):
            raise ValueError(QUALITY_PAIR)
        if self.adversarial_drop is not None and self.reference is None:
            raise ValueError(ADVERSARIAL_NEEDS)
        return self


_QUALITY_PAIR_RULE = cel("has(self.reference) == has(self.maxPerplexity)", QUALITY_PAIR)
_ADVERSARIAL_RULE = cel("!has(self.adversarialDrop) || has(self.reference)", ADVERSARIAL_NEEDS)


class DataSpec(KubeModel):
    """Where the training tokens come from."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.filter) || (has(self.filter.enabled) && !self.filter.enabled)"
                    " || (self.source.startsWith('pvc://') && self.format == 'jsonl')",
                    FILTER_NEEDS,
                ),
            ]
        }
    )

    source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=SOURCE_PATTERN,
        description="Dataset URI: `synthetic://<domains>` (the built-in corpus), `file:///path` (a file or folder"
        " inside the image) or `pvc://<claim>/<path>` (a file or folder on a PersistentVolumeClaim of the job's"
        " namespace, mounted read-only into every worker). A folder is read recursively: its `*.jsonl` or `*.txt`"
        " files by `format`. Object stores (s3://, gs://, hf://) are not supported yet.",
        json_schema_extra={"x-kubernetes-validations": [*_SOURCE_RULES]},
    )
    format: DataFormat = Field(
        default="jsonl",
        description="Record format of file and pvc sources: `jsonl` (one JSON object per line, its text under"
        " textField) or `text` (documents separated by blank lines). parquet and tokens are not supported yet.",
    )
    filter: DataFilterSpec | None = Field(
        default=None,
        description="The data filter, run as its own Indexed Job before the workers start (state Filtering); the"
        " workers then train on `<source>.filtered`. Needs a pvc:// source in the jsonl format.",
        json_schema_extra={"x-kubernetes-validations": [_QUALITY_PAIR_RULE, _ADVERSARIAL_RULE]},
    )
    tokenizer: str | None = Field(
        default=None,
        min_length=2,
        max_length=1024,
        pattern=ABSOLUTE_PATH_PATTERN,
        description="A tokenizer.json (Hugging Face tokenizers format) inside the pod, for text and jsonl"
        " sources. Unset: a byte-level BPE tokenizer of at most architecture.vocabSize tokens is trained on"
        " the corpus at start (deterministic: the same on every rank) and saved next to the checkpoints.",
        json_schema_extra={"x-kubernetes-validations": [NO_PARENT_SEGMENTS_RULE]},
    )
    text_field: str = Field(
        default="text", min_length=1, max_length=253, description="The field of a jsonl record that holds its text."
    )

    _no_parent_segments = field_validator("tokenizer")(reject_parent_segments)

    @field_validator("source")
    @classmethod
    def _source_shape(cls, source: str) -> str:
        """The CEL rules above, for configs that never meet an API server (local runs, the ConfigMap read back)."""
        if source.startswith("pvc://") and pvc_claim_and_path(source) is None:
            raise ValueError(_SOURCE_RULES[1]["message"])
        if source.startswith("file://") and not source.startswith("file:///"):
            raise ValueError(_SOURCE_RULES[2]["message"])
        if "/../" in source or source.endswith("/.."):
            raise ValueError(_SOURCE_RULES[3]["message"])
        return source

    @field_validator("filter", mode="before")
    @classmethod
    def _disabled_filter(cls, value: object) -> object:
        """`enabled: false` asks for nothing: read as no filter. Jobs stored under the first schema carry its
        default, `enabled: false` with fields since removed (minQuality, ...): no filter either, not an invalid spec."""
        if isinstance(value, dict) and value.get("enabled") is False:
            return None
        return value

    @model_validator(mode="after")
    def _filter_needs_a_claim(self) -> DataSpec:
        if self.filter is not None and (self.claim() is None or self.format != "jsonl"):
            raise ValueError(FILTER_NEEDS)
        return self

    def filtered_source(self) -> str:
        """Where the filter writes and the workers then read: `<source>.filtered` (a pvc:// source)."""
        return self.source.rstrip("/") + FILTER_OUTPUT_SUFFIX

    def claim(self) -> str | None:
        """The PersistentVolumeClaim a `pvc://` source reads (the operator mounts it), else None."""
        found = pvc_claim_and_path(self.source)
        return found[0] if found else None


def pvc_claim_and_path(source: str) -> tuple[str, str] | None:
    """`pvc://corpus/v3/train` -> ("corpus", "/v3/train"); None if `source` is not a well-formed pvc source."""
    if not re.fullmatch(PVC_SOURCE_PATTERN, source):
        return None
    claim, _, path = source.removeprefix("pvc://").partition("/")
    return claim, posixpath.normpath("/" + path)


def pvc_mount_path(claim: str) -> str:
    """Where the operator mounts `claim` in a worker (and where a local run's MOEOPS_DATA_ROOT stands in)."""
    return posixpath.join(DATA_MOUNT_ROOT, claim)
