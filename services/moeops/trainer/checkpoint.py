"""The trainer's distributed checkpoints with torch.distributed.checkpoint: model, optimizer, RNG and data position.

The layout (`step-XXXXXXXX` directories under the job's checkpoint directory, shared by all ranks, e.g. a
ReadWriteMany PVC) is `moeops.checkpoint`'s, which serving reads too. A checkpoint is written under a temporary
name and renamed by rank 0 once every rank has finished, so a directory with the final name is always complete: a
worker killed mid-save leaves only a temporary directory, which the next save overwrites and `latest` ignores.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from moeops.checkpoint.layout import (
    META_FILE,
    MODEL_KEY,
    OPTIMIZER_KEY,
    partial_step_dir,
    rank_state_file,
    read_meta,
    step_dir,
    step_dirs,
)

from .distributed import World, barrier


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Sharding(Protocol):
    """Describes rank-local shards as pieces of full tensors for saving, and as buffers of the rank's part only
    for loading (expert parallelism: expert_parallel.ExpertStateSharding)."""

    def for_save(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None: ...

    def local_placeholders(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None: ...

    def keep_local(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None: ...


def save(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    world: World,
    meta: dict[str, Any],
    keep: int,
    sharding: Sharding | None = None,
) -> Path:
    """Write the checkpoint of completed step `step` (all ranks call this)."""
    final, tmp = step_dir(root, step), partial_step_dir(root, step)
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    model_state, optim_state = get_state_dict(model, optimizer)
    if sharding is not None:
        sharding.for_save(model_state, optim_state)
    dcp_save({MODEL_KEY: model_state, OPTIMIZER_KEY: optim_state}, checkpoint_id=tmp)
    torch.save({"rng": _rng_state(), "step": step}, rank_state_file(tmp, world.rank))
    barrier(world)
    if world.is_main:
        (tmp / META_FILE).write_text(json.dumps({"step": step, "world_size": world.world_size, **meta}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(root, keep)
    barrier(world)
    return final


def _prune(root: Path, keep: int) -> None:
    for _, path in step_dirs(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World, sharding: Sharding | None = None
) -> int:
    """Restore model, optimizer and (same world size) RNG state; returns the completed step."""
    model_state, optim_state = get_state_dict(model, optimizer)
    if sharding is not None:
        sharding.local_placeholders(model_state, optim_state)
    # Only the per-parameter optimizer state: the param groups on disk list one rank's parameters, which match
    # this rank's only when the layout is the same (a pipeline split moves layers between ranks), and their
    # hyperparameters come from the config anyway (the learning rate is set every step).
    state: dict[str, Any] = {MODEL_KEY: model_state, OPTIMIZER_KEY: {"state": optim_state["state"]}}
    dcp_load(state, checkpoint_id=path)
    optim_state["state"] = state[OPTIMIZER_KEY]["state"]
    if sharding is not None:
        sharding.keep_local(state[MODEL_KEY], optim_state)
    set_state_dict(model, optimizer, model_state_dict=state[MODEL_KEY], optim_state_dict=optim_state)
    rank_file = rank_state_file(path, world.rank)
    meta = read_meta(path)
    if rank_file.exists() and meta.get("world_size") == world.world_size:
        _set_rng_state(torch.load(rank_file, weights_only=False)["rng"])
    return int(meta["step"])
