"""The plan every task of a filter run reads (work/config.json): inputs, their byte ranges per task, the MinHash
parameters, where the shards go. Written once before the first stage (by `moeops data filter` locally; by the
operator for the Indexed Jobs), so that every task of every stage agrees on it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .minhash import MinHashParams
from .ranges import FileRange, split_ranges

CONFIG_FILE = "config.json"
STAGES = ("signatures", "buckets", "clusters", "reference", "adversarial", "domains", "filter")
SINGLE_TASK_STAGES = ("clusters", "reference", "adversarial", "domains")
"""A union-find over all pairs; training the quality model and the level-3 classifier on the reference (nothing
to do without one)."""


class FilterConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: list[str] = Field(min_length=1)
    """The jsonl files, in reading order (their sizes fixed when the plan was made)."""
    sizes: list[int]
    tasks: int = Field(ge=1)
    output: str
    text_field: str = "text"
    shingle: int = Field(default=5, ge=1)
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=8, ge=1)
    seed: int = 1
    reference: list[str] = Field(default_factory=list)
    """Trusted jsonl files for the quality model; none: no quality filter."""
    max_perplexity: float | None = Field(default=None, gt=1.0)
    """Documents whose perplexity under the reference's byte n-gram model exceeds this are dropped."""
    adversarial_drop: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Level 3: drop this share of the corpus that a classifier finds least like the reference (needs one)."""
    adversarial_sample: int = Field(default=5_000, ge=10)
    """Documents of each side the classifier is trained on (16 KiB of features each: 160 MiB at the default)."""
    domain_weights: dict[str, float] | None = Field(default=None, min_length=1)
    """Level 2: target share per domain, each named by a seed word (moeops.datafilter.domains)."""
    domain_sample: int = Field(default=5_000, ge=10)
    """Documents the domains are fitted on."""
    lm_order: int = Field(default=4, ge=2)
    examples: int = Field(default=5, ge=0)
    """Removed documents the report shows per reason."""
    ranges: list[list[FileRange]] = Field(default_factory=list)

    def params(self) -> MinHashParams:
        return MinHashParams(shingle=self.shingle, bands=self.bands, rows=self.rows, seed=self.seed)

    def stage_tasks(self, stage: str) -> int:
        """Tasks of a stage: one for SINGLE_TASK_STAGES, else `tasks`."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return 1 if stage in SINGLE_TASK_STAGES else self.tasks

    def quality_filter(self) -> bool:
        return bool(self.reference) and self.max_perplexity is not None

    def adversarial(self) -> bool:
        return bool(self.reference) and self.adversarial_drop is not None

    def band_names(self) -> list[str]:
        """What the buckets stage groups by: the exact hash, then each band."""
        return ["exact", *(f"band-{band:03d}" for band in range(self.bands))]


def plan(inputs: list[str], sizes: list[int], tasks: int, output: str, **options: object) -> FilterConfig:
    if len(inputs) != len(sizes):
        raise ValueError("one size per input file")
    return FilterConfig.model_validate(
        {
            "inputs": inputs,
            "sizes": sizes,
            "tasks": tasks,
            "output": output,
            **options,
            "ranges": split_ranges(sizes, tasks),
        }
    )
