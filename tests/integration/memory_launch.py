"""Measures the model state (parameters + gradients + AdamW state) each rank of a training run holds, for the
runs of a JSON list, in one launch (test_memory_vs_trainer.py, benchmarks/model_state_bytes.py):

    python -m torch.distributed.run --standalone --nproc-per-node=N memory_launch.py RUNS.json OUT.json

RUNS.json: [{"name": ..., "config": ..., "checkpoint_dir": ...}, ...]; OUT.json (rank 0): {name: [bytes of each
rank's {"params", "grads", "optimizer", "total", "host", "device"}]} (host: FSDP2's offloaded shards with their
gradients and optimizer state). Each run trains two steps with the trainer as `moeops train` builds it, the
second without clearing its gradients: at its end the rank holds weights, gradients and both AdamW moments at
once, the model-state peak of a step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from moeops.trainer.distributed import init_world, shutdown
from moeops.trainer.loop import Trainer
from moeops.trainer.metrics import NullSink
from moeops.trainer.model_state import model_state_bytes
from moeops.trainer.preflight import load_config

KEYS = ("params", "grads", "optimizer", "total", "host", "device")


def measure(config: Path, checkpoint_dir: Path) -> list[dict[str, int]]:
    world = init_world()
    trainer = Trainer(load_config(config), world, NullSink(), checkpoint_dir)
    trainer.train_step()
    trainer.optimizer.zero_grad = lambda set_to_none=True: None  # type: ignore[method-assign]
    trainer.train_step()
    held = model_state_bytes(trainer.model, trainer.optimizer)
    mine = torch.tensor([held[k] for k in KEYS], dtype=torch.int64)
    every = [torch.zeros_like(mine) for _ in range(world.world_size)]
    if world.distributed:
        dist.all_gather(every, mine)
    else:
        every = [mine]
    return [dict(zip(KEYS, t.tolist(), strict=True)) for t in every]


def main(runs_file: Path, out: Path) -> int:
    found = {}
    try:
        for entry in json.loads(runs_file.read_text()):
            found[entry["name"]] = measure(Path(entry["config"]), Path(entry["checkpoint_dir"]))
    finally:
        shutdown()
    if os.environ.get("RANK", "0") == "0":
        out.write_text(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
