"""Distributed checkpoints with torch.distributed.checkpoint: model, optimizer, RNG and data position.

A checkpoint is a directory `step-XXXXXXXX` under the job's checkpoint directory (shared by all ranks,
e.g. a ReadWriteMany PVC). It is written under a temporary name and renamed by rank 0 once every rank has
finished, so a directory with the final name is always complete: a worker killed mid-save leaves only a
temporary directory, which the next save overwrites and `latest` ignores.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from .distributed import World, barrier

STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def latest(root: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint: (step, directory)."""
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return max(found) if found else None


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
    """Turns rank-local shards into full tensors for saving and back after loading (expert parallelism)."""

    def gather(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None: ...

    def full_placeholders(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None: ...

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
    final, tmp = step_dir(root, step), root / f".step-{step:08d}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    model_state, optim_state = get_state_dict(model, optimizer)
    if sharding is not None:
        sharding.gather(model_state, optim_state)
    dcp_save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    torch.save({"rng": _rng_state(), "step": step}, tmp / f"rank-{world.rank:05d}.pt")
    barrier(world)
    if world.is_main:
        (tmp / "meta.json").write_text(json.dumps({"step": step, "world_size": world.world_size, **meta}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(root, keep)
    barrier(world)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World, sharding: Sharding | None = None
) -> int:
    """Restore model, optimizer and (same world size) RNG state; returns the completed step."""
    model_state, optim_state = get_state_dict(model, optimizer)
    if sharding is not None:
        sharding.full_placeholders(model_state, optim_state)
    # Only the per-parameter optimizer state: the param groups on disk list one rank's parameters, which match
    # this rank's only when the layout is the same (a pipeline split moves layers between ranks), and their
    # hyperparameters come from the config anyway (the learning rate is set every step).
    state: dict[str, Any] = {"model": model_state, "optim": {"state": optim_state["state"]}}
    dcp_load(state, checkpoint_id=path)
    optim_state["state"] = state["optim"]["state"]
    if sharding is not None:
        sharding.keep_local(state["model"], optim_state)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=optim_state)
    rank_file = path / f"rank-{world.rank:05d}.pt"
    meta = read_meta(path)
    if rank_file.exists() and meta.get("world_size") == world.world_size:
        _set_rng_state(torch.load(rank_file, weights_only=False)["rng"])
    return int(meta["step"])


def read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's meta.json (step, world size, loss, job, pipeline split)."""
    meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
    return meta


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Load a checkpoint's model weights into an unsharded model in this process alone (evaluation, serving):
    no collectives, so it works on one rank of a running job or in a process without a process group."""
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        # DCP warns that it "assumes the intent is to load in a single process": it is.
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp_load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state["model"])
