"""A node without GPUs, measured for real: a process burning CPU in a real pod cgroup (cgroup v2, the layout the
dev cluster's process node uses) → the CPU-only node source (RAPL or the labelled estimate, split by `cpu.stat`)
→ the node agent → a real nats-server → the aggregator → the per-job totals in the `moeops-carbon` bucket, which
the operator copies into `.status.carbon`. The pods' labels are the operator's own (`training_labels`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest

from moeops.bus.connection import ConnectionOptions
from moeops.carbon.accounting.aggregator import AggregatorSettings, CarbonAggregator
from moeops.carbon.accounting.intensity import default_static_table
from moeops.carbon.accounting.ledger import WorkloadKind
from moeops.carbon.accounting.messages import WorkloadCarbon
from moeops.carbon.accounting.store import ensure_carbon_bucket, workload_carbon
from moeops.carbon.meter.attribution import PodInfo
from moeops.carbon.meter.pod_cpu import parse_usage_usec
from moeops.carbon.meter.rapl import DEFAULT_WATTS_PER_CPU, CpuEnergyMeter
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.cpu_source import CpuNodeSource, CpuSourceSettings
from moeops.carbon.node.spool import Spool
from moeops.devcluster.nats_server import NatsServer
from moeops.operator.naming import training_labels
from pod_cgroups import BUSY_LOOP, pod_cgroups

pytestmark = pytest.mark.nats

NS = "ml"
BUSY_UID, IDLE_UID = "0b05e5e0-0000-4000-8000-000000000001", "0b05e5e0-0000-4000-8000-000000000002"
BUSY_CID, IDLE_CID = "b" * 64, "d" * 64
TARGET_J = 3.0
"""Enough for the test: at the estimate's 5 W per busy CPU, under a second of the busy loop's CPU time."""


def options(url: str) -> ConnectionOptions:
    return ConnectionOptions(servers=(url,), name="test", reconnect_wait_s=0.05, reconnect_wait_max_s=0.2)


async def job_totals(url: str, job: str) -> WorkloadCarbon | None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        return await workload_carbon(await ensure_carbon_bucket(client.jetstream()), NS, WorkloadKind.TRAINING_JOB, job)
    finally:
        await client.close()


async def test_a_pod_burning_cpu_is_charged_to_its_job_on_a_node_without_gpus(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    with pod_cgroups() as cgroups:
        busy_dir = cgroups.container(BUSY_UID, BUSY_CID)
        cgroups.container(IDLE_UID, IDLE_CID)
        cgroups.run_in(busy_dir, BUSY_LOOP)
        pods = [
            PodInfo(NS, "moe-debug-0", BUSY_UID, training_labels("moe-debug"), {BUSY_CID: "worker"}),
            PodInfo(NS, "idle-0", IDLE_UID, training_labels("idle"), {IDLE_CID: "worker"}),
        ]
        meter = CpuEnergyMeter()
        settings = CpuSourceSettings("node-a", "world", cgroup_root=cgroups.root)
        source = CpuNodeSource(settings, pods=lambda: pods, cpu=meter)
        url = nats_server.url
        aggregator = CarbonAggregator(options(url), default_static_table(), pue=1.0,
                                      settings=AggregatorSettings(fetch_timeout_s=0.1))  # fmt: skip
        agent = NodeAgent(source, Spool(tmp_path / "spool"), options(url), AgentSettings(poll_interval_s=0.25))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(aggregator.run(stop)), asyncio.create_task(agent.run(stop))]
        try:
            await asyncio.wait_for(aggregator.ready.wait(), 20)
            totals: list[WorkloadCarbon | None] = [None]

            async def charged() -> bool:
                totals[0] = await job_totals(url, "moe-debug")
                return totals[0] is not None and totals[0].energy_j >= TARGET_J

            await eventually_async(charged, "the busy pod's job has energy in the bucket", timeout_s=60)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        busy_cpu_s = (parse_usage_usec((busy_dir.parent / "cpu.stat").read_text()) or 0) / 1e6

    job = await job_totals(url, "moe-debug")
    assert job is not None and job.energy_j >= TARGET_J and job.gco2e > 0
    assert all(stage.gpu_energy_j == 0 for stage in job.stages.values())
    assert await job_totals(url, "idle") is None  # its cgroup ran nothing: no share of the node's CPU energy
    assert not source.degraded
    if all(stage.cpu_estimated for stage in job.stages.values()):  # no readable RAPL: the estimate's own bound
        # The pod's CPU seconds × 5 W, less what it ran before its baseline; slack for the clocks' disagreement.
        assert job.energy_j <= DEFAULT_WATTS_PER_CPU * busy_cpu_s * 1.2


async def eventually_async(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not after {timeout_s}s: {what}")
        await asyncio.sleep(0.5)
