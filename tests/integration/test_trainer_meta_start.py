"""Start-up on the meta device: the trainer builds the full Transformer without storage and allocates only the
part it holds once sharded (trainer/init_weights.py). That every layout starts from the same weights is
test_parallel_parity.py's business (the losses of step 1 match)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_runs import TINY, write_config

from moeops.model.transformer import Transformer
from moeops.trainer.distributed import World
from moeops.trainer.loop import Trainer
from moeops.trainer.metrics import NullSink
from moeops.trainer.preflight import load_config

pytestmark = pytest.mark.slow  # two trainers built and stepped (~10-40 s on a busy machine)

CPU = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_the_full_model_is_built_on_the_meta_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[torch.device] = []
    original = Transformer.reset_parameters

    def spy(self: Transformer) -> None:
        built.append(self.embedding.weight.device)
        original(self)

    monkeypatch.setattr(Transformer, "reset_parameters", spy)
    trainer = Trainer(load_config(write_config(tmp_path)), CPU, NullSink(), tmp_path / "ckpt")
    assert built == [torch.device("meta")]
    held = dict(trainer.model.named_parameters())
    assert all(p.device.type == "cpu" for p in held.values())
    assert torch.equal(held["norm.weight"], torch.ones(TINY.d_model))  # norms at one, as the model's own init
    (tmp_path / "again").mkdir()
    again = Trainer(load_config(write_config(tmp_path / "again")), CPU, NullSink(), tmp_path / "again" / "ckpt")
    for name, p in again.model.named_parameters():  # deterministic: the same seed gives the same weights
        assert torch.equal(p, held[name]), name
    assert trainer.train_step().loss == pytest.approx(again.train_step().loss, rel=1e-6)
