"""The model a server serves: a trainer's checkpoint loaded in eval mode, its tokenizer, and its name.

Found as `moeops export` finds it (both read the format through `moeops.checkpoint`): `checkpoint` is a
`step-XXXXXXXX` directory or the directory of them (the newest is taken), and the architecture comes from the run's
resolved `config.json` (given, or beside the checkpoints as `moeops train --job` leaves it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moeops.api.v1alpha1.presets import Architecture
from moeops.checkpoint.layout import CheckpointError, find_run_config, read_architecture, resolve_checkpoint
from moeops.checkpoint.weights import load_model
from moeops.model import Transformer
from moeops.serving.chat_template import CONTENT_ONLY, ROLE_LINES, ChatTemplate, load_chat_template
from moeops.serving.decoding.codec import CharCodec, Codec, codec_for


class ModelLoadError(ValueError):
    """The checkpoint, its config or its tokenizer cannot be served (a message for the operator's log)."""


@dataclass(frozen=True)
class CheckpointRef:
    """Where the weights and the architecture are: resolved before any weight is read (fails fast)."""

    step_dir: Path
    step: int
    config: Path
    arch: Architecture

    @classmethod
    def resolve(cls, checkpoint: Path, config: Path | None = None) -> CheckpointRef:
        try:
            step_dir, step = resolve_checkpoint(checkpoint)
            found = find_run_config(step_dir, config)
            return cls(step_dir, step, found, read_architecture(found))
        except CheckpointError as exc:
            raise ModelLoadError(str(exc)) from exc


@dataclass(frozen=True)
class ServedModel:
    name: str
    """The id clients put in `model` (GET /v1/models lists it)."""
    model: Transformer
    codec: Codec
    step: int
    checkpoint: Path
    stored_template: ChatTemplate | None = None
    """The chat template stored with the model (chat_template.py); None: the tokenizer's default."""

    @property
    def chat_template(self) -> ChatTemplate:
        if self.stored_template is not None:
            return self.stored_template
        return CONTENT_ONLY if isinstance(self.codec, CharCodec) else ROLE_LINES

    @property
    def arch(self) -> Architecture:
        return self.model.arch

    @property
    def context(self) -> int:
        return self.model.arch.seq_len


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_served(ref: CheckpointRef, name: str, device: torch.device | None = None) -> ServedModel:
    """Read the weights (seconds for a large model: call it off the event loop) and the tokenizer."""
    try:
        model = load_model(ref.step_dir, ref.arch)
    except CheckpointError as exc:
        raise ModelLoadError(str(exc)) from exc
    try:
        codec = codec_for(ref.step_dir.parent, ref.arch.vocab_size)
        template = load_chat_template(ref.step_dir.parent)
    except ValueError as exc:
        raise ModelLoadError(f"{ref.step_dir.parent}: {exc}") from exc
    model = model.to(device or default_device()).eval()
    return ServedModel(name, model, codec, ref.step, ref.step_dir, template)
