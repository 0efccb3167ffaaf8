"""Where things are in a checkpoint root, and reading the small files (see the package docstring). No torch.

Errors are `CheckpointError` (a ValueError) with a message a user can act on; the CLIs turn it into theirs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from moeops.api.v1alpha1.presets import Architecture

STEP_DIR = re.compile(r"^step-(\d{8})$")
META_FILE = "meta.json"
RUN_CONFIG_FILE = "config.json"
"""The run's resolved config beside its checkpoints: what a model server needs to rebuild the model from them."""
TOKENIZER_FILE = "tokenizer.json"
"""A trained BPE tokenizer beside the checkpoints; its absence means the synthetic character tokenizer."""
MODEL_KEY = "model"
OPTIMIZER_KEY = "optim"
"""The two entries of a checkpoint's DCP state: the model's state dict (full-model names) and the optimizer's."""


class CheckpointError(ValueError):
    """A checkpoint or run config that cannot be read (the message names the path and what was expected)."""


def step_dir_name(step: int) -> str:
    """The folder of step `step`'s checkpoint (the operator names it in `.status.checkpoint.location`)."""
    return f"step-{step:08d}"


def step_dir(root: Path, step: int) -> Path:
    return root / step_dir_name(step)


def partial_step_dir(root: Path, step: int) -> Path:
    """Where a save of `step` is written before the rename that makes it complete."""
    return root / f".step-{step:08d}.tmp"


def rank_state_file(step_path: Path, rank: int) -> Path:
    """One rank's RNG state and step in a checkpoint."""
    return step_path / f"rank-{rank:05d}.pt"


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Every checkpoint with its final name under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())


def latest(root: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint: (step, directory)."""
    found = step_dirs(root)
    return found[-1] if found else None


def read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's meta.json (step, world size, loss, job, pipeline split)."""
    meta: dict[str, Any] = json.loads((path / META_FILE).read_text())
    return meta


def resolve_checkpoint(path: Path) -> tuple[Path, int]:
    """(step directory, step) for a step directory or a directory of them (the newest)."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (path / META_FILE).is_file():
        match = STEP_DIR.match(path.name)
        return path, int(match.group(1)) if match else -1
    found = latest(path)
    if found is None or not (found[1] / META_FILE).is_file():
        raise CheckpointError(
            f"{path}: not a checkpoint (expected a step-XXXXXXXX directory with meta.json, or a directory of them)"
        )
    return found[1], found[0]


def find_run_config(step_path: Path, config: Path | None = None) -> Path:
    """`config`, or the run's config.json: the checkpoint root's (`<root>/step-XXXXXXXX`), or the run directory's
    as `moeops train --job` leaves it (`<run>/config.json` for `<run>/checkpoints/step-XXXXXXXX`)."""
    if config is not None:
        return config
    candidates = [step_path.parent.parent / RUN_CONFIG_FILE, step_path.parent / RUN_CONFIG_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no config.json beside {step_path.parent} (looked for {', '.join(map(str, candidates))}): "
        "give the run's resolved config with --config"
    )


def read_architecture(config: Path) -> Architecture:
    """The config's `architecture` alone: the rest of a training config (data, plan, carbon) does not matter to
    a reader of the weights, and an older run's config stays readable when those sections change."""
    try:
        body = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config}: not a readable JSON config: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("architecture"), dict):
        raise CheckpointError(f"{config}: no `architecture` object: not a resolved training config")
    try:
        return Architecture.model_validate(body["architecture"])
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise CheckpointError(f"{config}: invalid architecture: {exc}") from exc
