"""The carbon instruments fed at runtime over a real nats-server: a node agent (its `NodeSource` over the FAKE NVML,
`PollTelemetry` as its `on_split`) sends to the aggregator `cli.make_aggregator` builds, and one `CarbonTelemetry`
(on an SDK MeterProvider with an InMemoryMetricReader) sees the GPU energy per pod and the workload's emissions."""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from polling import eventually

from fakes.fake_nvml import FakeGpu, FakeNvml, Trace
from moeops.bus.connection import ConnectionOptions
from moeops.carbon import cli
from moeops.carbon.accounting.ledger import Stage, WorkloadKind
from moeops.carbon.accounting.messages import workload_totals
from moeops.carbon.meter.attribution import PodInfo
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings
from moeops.carbon.node.poll_telemetry import PollTelemetry
from moeops.carbon.node.spool import Spool
from moeops.carbon.node.telemetry import CarbonTelemetry
from moeops.carbon.podresources.devices import ContainerRef
from moeops.devcluster.nats_server import NatsServer

pytestmark = pytest.mark.nats

NODE, NS, POD, GPU, IDLE_W, SECONDS = "gpu-node-0", "ml", "moe-10b-0", "GPU-0", 50.0, 10.0


def points(reader: InMemoryMetricReader, name: str) -> dict[frozenset[tuple[str, Any]], float]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    metrics: list[Any] = [
        m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == name
    ]
    return {frozenset(p.attributes.items()): p.value for m in metrics for p in m.data.data_points}


async def test_agent_polls_and_aggregator_totals_reach_the_instruments(nats_server: NatsServer, tmp_path: Path) -> None:
    metric_reader = InMemoryMetricReader()
    telemetry = CarbonTelemetry(MeterProvider(metric_readers=[metric_reader]).get_meter("moeops.carbon"))
    nvml = FakeNvml([FakeGpu(GPU, Trace.steady(300.0))])
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()
    pod = PodInfo(NS, POD, "11111111-2222-3333-4444-00000000000a", {"moeops.dev/training-job": "moe-10b"})
    settings = NodeSourceSettings(NODE, "de", gpu_idle_power_w=IDLE_W, proc_root=tmp_path / "proc",
                                  cgroup_root=tmp_path / "cgroup")  # fmt: skip
    hook = PollTelemetry(telemetry, NODE, reader)
    source = NodeSource(reader, nvml, settings, devices=lambda: {GPU: (ContainerRef(NS, POD, "worker"),)},
                        pods=lambda: [pod], clock=nvml.clock, on_split=hook)  # fmt: skip
    options = ConnectionOptions(servers=(nats_server.url,), name="test", reconnect_wait_s=0.05)
    agent = NodeAgent(source, Spool(tmp_path / "spool"), options, AgentSettings(poll_interval_s=0.02), clock=nvml.clock)
    for _ in range(round(SECONDS * 10)):  # 10 s of the trace at 10 Hz on the fake clock, spooled
        agent.poll_once()
        nvml.clock.advance(0.1)
    agent.poll_once(commit=True)
    spooled = len(agent.spool.unacked(10_000))

    aggregator = cli.make_aggregator({"MOEOPS_NATS_URL": nats_server.url}, telemetry)
    stops = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.ensure_future(aggregator.run(stops[0]))]
    try:
        await asyncio.wait_for(aggregator.ready.wait(), 20)  # it creates the stream the agent sends to
        tasks.append(asyncio.ensure_future(agent.run(stops[1])))
        await eventually(lambda: aggregator.counters.applied == spooled, "the ledger has every delta")
        await eventually(lambda: bool(points(metric_reader, "moeops.carbon.emissions")), "emissions are observed")
        for stop, task in zip(stops[::-1], tasks[::-1], strict=True):
            stop.set()
            await asyncio.wait_for(task, 20)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    energy = points(metric_reader, "hw.energy")
    base = {("hw.id", GPU), ("hw.type", "gpu"), ("k8s.node.name", NODE), ("hw.name", "NVIDIA H100 80GB HBM3")}
    on_pod = frozenset(base | {("k8s.namespace.name", NS), ("k8s.pod.name", POD)})
    assert energy == pytest.approx({frozenset(base): IDLE_W * SECONDS, on_pod: (300.0 - IDLE_W) * SECONDS}, rel=0.005)
    [totals] = workload_totals(aggregator.ledger.workloads())
    [(intensity_source, grams)] = totals.stages[Stage.TRAIN].gco2e_by_source.items()
    assert grams > 0
    emissions = points(metric_reader, "moeops.carbon.emissions")
    assert [dict(attrs) for attrs in emissions] == [
        {"k8s.namespace.name": NS, "moeops.workload.kind": WorkloadKind.TRAINING_JOB.value,
         "moeops.workload.name": "moe-10b", "moeops.stage": Stage.TRAIN.value,
         "moeops.carbon.accounting.intensity.source": intensity_source}
    ]  # fmt: skip
    assert math.isclose(next(iter(emissions.values())), grams, rel_tol=1e-12)
