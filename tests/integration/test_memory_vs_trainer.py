"""The planner's memory model agrees with the trainer: per rank, the bytes of parameters + gradients + AdamW
state the trainer holds at a step's peak (memory_launch.py) are the planner's `model_state_bytes_per_gpu` for the
same plan, within 10%, on CPU with gloo at world sizes 1, 2 and 4 (data, expert and expert-within-data
parallelism), and with optimizer offload what stays on the device. Under DDP (a full replica per rank) the
planner's figure was 1/D of the truth.

Tensor parallelism is left out: the planner divides everything by the world size, while the embedding, head,
norms and routers are replicated over the tensor ranks (a few % of a real model, most of this tiny one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_runs import TINY, train_env, write_config

from moeops.operator.planning.memory import MASTER_BYTES, Degrees, model_state_bytes_per_gpu
from moeops.operator.planning.sizing import model_size

pytestmark = pytest.mark.slow  # torchrun launches

# Wide enough that FSDP's dim-0 padding and the scalar AdamW step counters are noise.
ARCH = TINY.model_copy(update={"d_model": 64, "ffn_hidden": 64})
LAUNCHER = Path(__file__).with_name("memory_launch.py")
TOLERANCE = 0.10

# name: data, tensor, pipeline, expert
LAYOUTS = {
    "single": (1, 1, 1, 1),
    "DP2": (2, 1, 1, 1),
    "EP2": (2, 1, 1, 2),
    "DP4": (4, 1, 1, 1),
    "EP4": (4, 1, 1, 4),
    "DP2xEP2": (4, 1, 1, 2),
    "DP2-offload": (2, 1, 1, 1),
    "DP2xEP2-offload": (4, 1, 1, 2),
}
OFFLOAD = {name for name in LAYOUTS if name.endswith("-offload")}
"""The plan asks for optimizer offload: FSDP2's shards, their gradients and AdamW state live in host memory."""


def _world(degrees: tuple[int, int, int, int]) -> int:
    data, tensor, pipeline, _ = degrees
    return data * tensor * pipeline


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, int]]]:
    root = tmp_path_factory.mktemp("memory")
    found: dict[str, list[dict[str, int]]] = {}
    for world in sorted({_world(d) for d in LAYOUTS.values()}):
        entries = []
        for name, (data, tensor, pipeline, expert) in LAYOUTS.items():
            if _world((data, tensor, pipeline, expert)) != world:
                continue
            folder = root / name
            folder.mkdir()
            config = write_config(folder, data=data, tensor=tensor, pipeline=pipeline, expert=expert, arch=ARCH)
            if name in OFFLOAD:
                resolved = json.loads(config.read_text())
                resolved["plan"]["optimizerOffload"] = True
                config.write_text(json.dumps(resolved))
            entries.append({"name": name, "config": str(config), "checkpoint_dir": str(folder / "ckpt")})
        runs, out = root / f"runs-{world}.json", root / f"measured-{world}.json"
        runs.write_text(json.dumps(entries))
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"] if world > 1 else []
        result = subprocess.run([sys.executable, *launcher, str(LAUNCHER), str(runs), str(out)],
                                capture_output=True, text=True, timeout=300, env=train_env())  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        found.update(json.loads(out.read_text()))
    return found


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name not in OFFLOAD])
def test_every_rank_holds_what_the_planner_counts(layout: str, measured: dict[str, list[dict[str, int]]]) -> None:
    data, tensor, pipeline, expert = LAYOUTS[layout]
    planned = model_state_bytes_per_gpu(ARCH, Degrees(data, tensor, pipeline, expert))
    ranks = measured[layout]
    assert len(ranks) == _world(LAYOUTS[layout])
    for rank, held in enumerate(ranks):
        assert held["grads"] > 0 and held["optimizer"] > 0, (rank, held)  # the peak: all three at once
        assert held["host"] == 0 and held["device"] == held["total"], (rank, held)
        assert held["total"] == pytest.approx(planned, rel=TOLERANCE), (rank, held, planned)


@pytest.mark.parametrize("layout", sorted(OFFLOAD))
def test_with_optimizer_offload_the_device_holds_at_most_the_planners_figure(
    layout: str, measured: dict[str, list[dict[str, int]]]
) -> None:
    """FSDP2's CPUOffloadPolicy: its shards, their gradients and AdamW state on the host (none on the device); the
    planner still counts their weight and gradient bytes (an upper bound), and the experts under expert
    parallelism with their state in full (they are not FSDP's and stay on the device)."""
    data, tensor, pipeline, expert = LAYOUTS[layout]
    world = _world(LAYOUTS[layout])
    planned = model_state_bytes_per_gpu(ARCH, Degrees(data, tensor, pipeline, expert, optimizer_offload=True))
    not_offloaded = model_state_bytes_per_gpu(ARCH, Degrees(data, tensor, pipeline, expert))
    fsdp_bound = model_size(ARCH).dense_params * MASTER_BYTES / world if expert > 1 else planned
    for rank, held in enumerate(measured[layout]):
        assert held["host"] > 0 and held["optimizer"] > 0, (rank, held)
        assert held["device"] <= planned, (rank, held, planned)
        assert held["device"] == pytest.approx(planned - fsdp_bound, rel=TOLERANCE, abs=4096), (rank, held, planned)
        assert held["total"] == pytest.approx(not_offloaded, rel=TOLERANCE), (rank, held, not_offloaded)
