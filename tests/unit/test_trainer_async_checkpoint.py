"""The trainer's asynchronous checkpoint save (checkpoint.AsyncSaver): the checkpoint holds the state at the step
it was started, though training changes the model while its files are written, and it gets its final name only
once the write is awaited. (A resumed run from async-saved checkpoints on the same trajectory, with a worker
killed mid-run: tests/integration/test_trainer_cpu.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from moeops.checkpoint.layout import latest, partial_step_dir, step_dir
from moeops.trainer import checkpoint
from moeops.trainer.distributed import World

CPU = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

# DCP says it saves in a single process (it does) from its writer thread, where a catch_warnings cannot reach.
pytestmark = pytest.mark.filterwarnings("ignore:.*assuming the intent is to (save|load) in a single process")


def _model_and_optimizer(seed: int) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(8, 16)).square().mean().backward()
    optimizer.step()
    return model, optimizer


def test_an_async_checkpoint_holds_the_state_of_its_step_though_training_went_on(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer(0)
    at_save = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[model.get_parameter("0.weight")].items()}
    saver = checkpoint.AsyncSaver(CPU)
    saver.save(tmp_path, 3, model, optimizer, {"job": "t"}, keep=2)
    for _ in range(3):  # training goes on, in place, while the files may still be written
        optimizer.zero_grad()
        model(torch.randn(8, 16)).square().mean().backward()
        optimizer.step()
    assert not torch.equal(model.get_parameter("0.weight"), at_save["0.weight"])
    path = saver.wait()
    assert path == step_dir(tmp_path, 3) and path.is_dir() and not partial_step_dir(tmp_path, 3).exists()
    assert latest(tmp_path) is not None and latest(tmp_path)[0] == 3  # type: ignore[index]
    assert saver.wait() is None  # nothing pending any more

    restored, restored_optimizer = _model_and_optimizer(1)
    assert checkpoint.load(path, restored, restored_optimizer, CPU) == 3
    for key, value in restored.state_dict().items():
        assert torch.equal(value, at_save[key]), key
    for key, value in restored_optimizer.state[restored.get_parameter("0.weight")].items():
        assert torch.equal(value, moments[key]), key


def test_the_next_save_completes_the_previous_one_first(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer(0)
    saver = checkpoint.AsyncSaver(CPU)
    saver.save(tmp_path, 1, model, optimizer, {}, keep=5)
    saver.save(tmp_path, 2, model, optimizer, {}, keep=5)
    assert step_dir(tmp_path, 1).is_dir()  # renamed before step 2's began
    assert not step_dir(tmp_path, 2).exists()  # still being written or awaiting its rename
    saver.wait()
    assert step_dir(tmp_path, 2).is_dir()


def test_a_finished_write_is_completed_by_the_next_steps_poll_not_by_the_next_save(tmp_path: Path) -> None:
    """A worker killed between two saves resumes from the last one: its directory has its final name as soon as its
    files are written (the trainer polls every step), not only when the next save begins an interval later."""
    model, optimizer = _model_and_optimizer(0)
    saver = checkpoint.AsyncSaver(CPU)
    saver.save(tmp_path, 4, model, optimizer, {}, keep=5)
    deadline = time.monotonic() + 60
    while (path := saver.poll()) is None:
        assert time.monotonic() < deadline, "the write never ended"
        time.sleep(0.01)
    assert path == step_dir(tmp_path, 4) and latest(tmp_path) is not None and latest(tmp_path)[0] == 4  # type: ignore[index]
    assert saver.poll() is None and saver.wait() is None  # completed once
