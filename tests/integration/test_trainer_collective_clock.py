"""FSDP2's collectives are timed as waiting, not as compute (trainer/parallelize.py's CollectiveClock): two gloo
ranks with unequal rows, as after a rebalance plan, and the rank with fewer rows must show less compute time.

Counted as compute, the wait for the slower rank in the all-gathers and reduce-scatter made the rank with less data
look as slow as the one with more: the rebalancer then gave it even less (live: [32, 32] drifted to [63, 1])."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from moeops.trainer.parallelize import CollectiveClock

pytestmark = pytest.mark.slow  # two spawned gloo processes

WIDTH, LAYERS = 256, 4
ROWS = {0: 8, 1: 4096}  # rank 0 has almost no work: it waits for rank 1 in every collective


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _worker(rank: int, port: int, results: dict[int, tuple[float, float]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        torch.manual_seed(0)
        model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))
        units = [fully_shard(layer, mesh=mesh) for layer in model]
        units.append(fully_shard(model, mesh=mesh))
        clock = CollectiveClock()
        clock.attach(units)
        x = torch.randn(ROWS[rank], WIDTH)
        for _ in range(3):  # the last step is measured
            before, started = clock.seconds, time.perf_counter()
            model(x).square().mean().backward()
            elapsed, waited = time.perf_counter() - started, clock.seconds - before
            model.zero_grad()
        results[rank] = (elapsed, waited)
    finally:
        dist.destroy_process_group()


def test_the_rank_with_less_data_shows_less_compute_and_its_wait_as_collective_time() -> None:
    results: dict[int, tuple[float, float]] = mp.Manager().dict()  # type: ignore[assignment]
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)  # type: ignore[attr-defined]
    (light_elapsed, light_waited), (heavy_elapsed, heavy_waited) = results[0], results[1]
    light_compute, heavy_compute = light_elapsed - light_waited, heavy_elapsed - heavy_waited
    # In lockstep both ranks take about as long per step; the light one spends most of it waiting.
    assert light_waited > 0.5 * light_elapsed, results
    assert light_compute < 0.25 * heavy_compute, results
