"""The training data a job's `data` section names: the built-in synthetic corpus, or text/JSONL files (inside
the image, or on the job's data claim mounted read-only) with a BPE tokenizer (loaded, or trained on the corpus
at start). Any problem is a configuration error (exit 78).

READERS has one reader per source scheme the API accepts (moeops.api.v1alpha1.data.DATA_SCHEMES); a test
holds the two equal (tests/unit/test_data_spec_contract.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from moeops.api import env
from moeops.api.v1alpha1.data import DATA_MOUNT_ROOT
from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
from moeops.checkpoint.layout import RUN_CONFIG_FILE, TOKENIZER_FILE
from moeops.data.synthetic import CharTokenizer, SyntheticCorpus, parse_source
from moeops.data.text import TextCorpus, load_text_corpus

from .errors import ConfigError

log = logging.getLogger("moeops.trainer")

Corpus = SyntheticCorpus | TextCorpus


def _synthetic(config: TrainingRuntimeConfig) -> SyntheticCorpus:
    try:
        domains = parse_source(config.data.source)
    except ValueError as exc:
        raise ConfigError(f"data.source: {exc}") from exc
    tokenizer = CharTokenizer()
    if config.architecture.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"architecture.vocabSize ({config.architecture.vocab_size}) is smaller than the synthetic corpus's"
            f" vocabulary ({tokenizer.vocab_size})"
        )
    return SyntheticCorpus(domains, seed=config.training.seed, seq_len=config.architecture.seq_len, tokenizer=tokenizer)


def data_root() -> Path:
    """Where `pvc://<claim>/...` claims are: the operator mounts each at /data/<claim>; a local run may say
    otherwise through MOEOPS_DATA_ROOT (a folder with one folder per claim)."""
    return Path(os.environ.get(env.DATA_ROOT) or DATA_MOUNT_ROOT)


def _text(config: TrainingRuntimeConfig) -> TextCorpus:
    data, arch = config.data, config.architecture
    try:
        corpus = load_text_corpus(
            data.source,
            data.format,
            arch.seq_len,
            config.training.seed,
            data.tokenizer,
            vocab_size=arch.vocab_size,
            text_field=data.text_field,
            data_root=data_root(),
        )
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data: {exc}") from exc
    log.info("data %s (%s): %d documents, %d tokens, %d windows of %d, vocabulary %d", data.source, data.format,
             corpus.document_count, len(corpus.stream), corpus.windows, corpus.seq_len, corpus.vocab_size)  # fmt: skip
    return corpus


READERS: dict[str, Callable[[TrainingRuntimeConfig], Corpus]] = {
    "synthetic": _synthetic,
    "file": _text,
    "pvc": _text,
}
"""The corpus builder of each source scheme."""


def build_corpus(config: TrainingRuntimeConfig) -> Corpus:
    source = config.data.source
    scheme = source.split("://", 1)[0]
    reader = READERS.get(scheme)
    if reader is None:
        raise ConfigError(f"data.source {source!r}: this trainer reads {', '.join(f'{s}://' for s in READERS)}")
    return reader(config)


def save_tokenizer(corpus: Corpus, checkpoint_root: Path) -> Path | None:
    """Keep a trained tokenizer next to the checkpoints (the model's ids mean nothing without it)."""
    if not isinstance(corpus, TextCorpus):
        return None
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    path = checkpoint_root / TOKENIZER_FILE
    corpus.tokenizer.save(path)
    return path


def save_run_config(config: TrainingRuntimeConfig, checkpoint_root: Path) -> Path:
    """Keep the resolved config next to the checkpoints: in a pod the config is a ConfigMap, gone with the job,
    while an InferenceService serves the checkpoint volume and reads the architecture from here (serving/loader.py).
    Written to a temporary name and renamed, so a server never reads half a file."""
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    path = checkpoint_root / RUN_CONFIG_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(config.model_dump_json(by_alias=True, indent=2))
    partial.replace(path)
    return path
