"""The trainer's distributed checkpoints with torch.distributed.checkpoint: model, optimizer, RNG and data position.

The layout (`step-XXXXXXXX` directories under the job's checkpoint directory, shared by all ranks, e.g. a
ReadWriteMany PVC) is `moeops.checkpoint`'s, which serving reads too. A checkpoint is written under a temporary
name and renamed by rank 0 once every rank has finished, so a directory with the final name is always complete: a
worker killed mid-save leaves only a temporary directory, which the next save overwrites and `latest` ignores.

Saves are asynchronous (`AsyncSaver`, DCP's `async_save`): the state is copied to host memory before training
goes on, the files are written by a background thread, and the rename waits for that write (`poll`, every step
while one is pending, renames it as soon as every rank's write has ended). The trainer awaits
a save before it starts the next, before it reloads (a pipeline re-split), and before it returns (end of training
or preemption), so a checkpoint the run reports is always complete on disk.
"""

from __future__ import annotations

import json
import random
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.staging import AsyncStager, DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
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

from .distributed import World, all_reduce_sum, barrier


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
    """Write the checkpoint of completed step `step` and return once it is complete (all ranks call this)."""
    tmp = _begin(root, step, world)
    dcp_save(_state(model, optimizer, sharding), checkpoint_id=tmp)
    return _finish(root, step, world, meta, keep)


class AsyncSaver:
    """One checkpoint at a time written in the background; `wait` completes it (all ranks call both, in step).

    DCP's writer thread runs its own collectives (the save plan, the metadata) while training runs others: a
    process group shared by two threads would pair one rank's training all-reduce with another's save gather,
    so the writer gets a group of its own (gloo: async_save needs a CPU backend, NCCL runs included)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._group: Any = None
        self._stager = DefaultStager(StagingOptions(False, False, False, False))  # synchronous copy to host memory
        self._pending: tuple[Future[Any], Path, int, dict[str, Any], int] | None = None

    def save(
        self,
        root: Path,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta: dict[str, Any],
        keep: int,
        sharding: Sharding | None = None,
    ) -> None:
        """Start writing step `step`'s checkpoint after the previous one is complete. Returns once the state is
        copied to host memory: the model and optimizer may change from then on."""
        self.wait()
        if self.world.distributed and self._group is None:
            self._group = dist.new_group(backend="gloo")
        tmp = _begin(root, step, self.world)
        # A host copy first, then the expert rows described on it: DCP's stager cannot copy a ShardedTensor.
        model_state, optim_state = get_state_dict(model, optimizer)
        staged = self._stager.stage({MODEL_KEY: model_state, OPTIMIZER_KEY: optim_state})
        state = staged.result() if isinstance(staged, Future) else staged
        if sharding is not None:
            sharding.for_save(state[MODEL_KEY], state[OPTIMIZER_KEY])
        no_dist = not self.world.distributed  # one process: say so (DCP warns when it has to assume it)
        future = dcp_async_save(state, checkpoint_id=tmp, process_group=self._group, no_dist=no_dist,
                                async_stager=_AlreadyStaged())  # fmt: skip
        assert isinstance(future, Future), "DCP's default stager returns a future"
        self._pending = (future, root, step, meta, keep)

    def poll(self) -> Path | None:
        """Complete the checkpoint being written if every rank has written its part; its path, or None. A
        collective while a save is pending (every rank calls it at the same step): a checkpoint gets its final name
        within a step of its write ending, not at the next save, so a worker killed in between resumes from it."""
        if self._pending is None:
            return None
        written = torch.tensor([1.0 if self._pending[0].done() else 0.0], device=self.world.device)
        if int(all_reduce_sum(written, self.world).item()) < self.world.world_size:
            return None
        return self.wait()

    def wait(self) -> Path | None:
        """Complete the checkpoint being written (rename it to its final name); its path, or None if none was."""
        if self._pending is None:
            return None
        future, root, step, meta, keep = self._pending
        self._pending = None
        future.result()  # this rank's files are written (a writer error is raised here)
        return _finish(root, step, self.world, meta, keep)


class _AlreadyStaged(AsyncStager):
    """The state handed to DCP is already a host copy (AsyncSaver.save): nothing to stage or wait for."""

    _synchronize_after_execute = False

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return state_dict

    def synchronize_staging(self) -> None:
        return None

    def close(self) -> None:
        return None


def _begin(root: Path, step: int, world: World) -> Path:
    """A fresh temporary directory for step `step`, with this rank's RNG state (taken now, at the step)."""
    tmp = partial_step_dir(root, step)
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    torch.save({"rng": _rng_state(), "step": step}, rank_state_file(tmp, world.rank))
    return tmp


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, sharding: Sharding | None) -> dict[str, Any]:
    model_state, optim_state = get_state_dict(model, optimizer)
    if sharding is not None:
        sharding.for_save(model_state, optim_state)
    return {MODEL_KEY: model_state, OPTIMIZER_KEY: optim_state}


def _finish(root: Path, step: int, world: World, meta: dict[str, Any], keep: int) -> Path:
    """Once every rank has written its part: rank 0 writes the metadata and gives the directory its final name."""
    final, tmp = step_dir(root, step), partial_step_dir(root, step)
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
