"""Carbon durability against a real nats-server: node agents (spool → MOEOPS_CARBON) and the aggregator (stream →
ledger → KV), with NATS, the agents and the aggregator killed mid-run. The ledger must end with exactly the trace's
energy: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from polling import eventually

from moeops.bus.connection import ConnectionOptions
from moeops.bus.subjects import MSG_ID_HEADER, carbon_energy_subject
from moeops.carbon.accounting.aggregator import AggregatorSettings, CarbonAggregator
from moeops.carbon.accounting.intensity import default_static_table
from moeops.carbon.accounting.ledger import CarbonLedger, DeltaId, EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.accounting.messages import CarbonEnergy, encode_carbon
from moeops.carbon.accounting.store import ensure_carbon_bucket, workload_carbon
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.spool import Spool
from moeops.devcluster.nats_server import NatsServer

pytestmark = pytest.mark.nats

REGION = "de"
NODES = ("gpu-node-0", "gpu-node-1")
WORKLOADS: tuple[WorkloadKey | None, ...] = (
    WorkloadKey(namespace="team-a", kind=WorkloadKind.TRAINING_JOB, name="llm.v2", stage=Stage.TRAIN),
    WorkloadKey(namespace="team-a", kind=WorkloadKind.TRAINING_JOB, name="llm.v2", stage=Stage.DATA),
    WorkloadKey(namespace="serving", kind=WorkloadKind.INFERENCE_SERVICE, name="chat", stage=Stage.INFERENCE),
    None,  # idle
)
AGENT = AgentSettings(poll_interval_s=0.02, publish_batch=32, publish_timeout_s=0.5, retry_base_s=0.02, retry_max_s=0.2)
AGGREGATOR = AggregatorSettings(batch=64, fetch_timeout_s=0.1, retry_s=0.1)


def options(url: str) -> ConnectionOptions:
    return ConnectionOptions(servers=(url,), name="test", reconnect_wait_s=0.05, reconnect_wait_max_s=0.2)


@dataclass
class TraceSource:
    """One node's synthetic trace, `per_poll` deltas a call. It outlives the agents: the GPUs go on measuring."""

    node: str
    count: int
    per_poll: int = 3
    cursor: int = 0
    deltas: list[EnergyDelta] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.node)
        start = datetime(2026, 5, 1, tzinfo=UTC)
        for index in range(self.count):
            self.deltas.append(
                EnergyDelta(
                    id=DeltaId(source=f"{self.node}/gpu-{index % 2}", epoch=0, sequence=0),
                    node=self.node,
                    region=REGION,
                    at=start + timedelta(seconds=index),
                    key=WORKLOADS[index % len(WORKLOADS)],
                    gpu_energy_j=rng.uniform(0.5, 400.0),
                    cpu_energy_j=rng.uniform(0.0, 40.0),
                )
            )

    def __call__(self) -> list[EnergyDelta]:
        chunk = self.deltas[self.cursor : self.cursor + self.per_poll]
        self.cursor += len(chunk)
        return chunk

    @property
    def done(self) -> bool:
        return self.cursor >= self.count


def expected_energy(sources: list[TraceSource]) -> dict[WorkloadKey | str, float]:
    """Per workload key, and per node for idle energy (keyed by node name)."""
    totals: dict[WorkloadKey | str, list[float]] = {}
    for source in sources:
        for delta in source.deltas:
            totals.setdefault(delta.key or delta.node, []).append(delta.energy_j)
    return {key: math.fsum(values) for key, values in totals.items()}


def matches(ledger: CarbonLedger, expected: dict[WorkloadKey | str, float]) -> bool:
    return all(
        math.isclose(
            ledger.idle(key).energy_j if isinstance(key, str) else ledger.totals(key).energy_j, value, rel_tol=1e-9
        )
        for key, value in expected.items()
    )


@dataclass
class Running:
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def crash(self) -> None:
        """Cancelled where it stands: what it had not written anywhere durable is gone."""
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 20)


def start(run: Callable[[asyncio.Event], Awaitable[None]]) -> Running:
    stop = asyncio.Event()
    return Running(asyncio.ensure_future(run(stop)), stop)


@contextmanager
def no_leftovers(tasks: list[Running]) -> Iterator[None]:
    try:
        yield
    finally:
        for running in tasks:
            running.task.cancel()


@pytest.mark.slow
async def test_kill_nats_agents_and_aggregator_mid_run_loses_and_doubles_nothing(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    sources = {node: TraceSource(node, count=600) for node in NODES}
    expected = expected_energy(list(sources.values()))
    url = nats_server.url

    def agent(node: str) -> tuple[NodeAgent, Running]:
        instance = NodeAgent(sources[node], Spool(tmp_path / "spool" / node), options(url), AGENT)
        return instance, start(instance.run)

    def aggregator() -> tuple[CarbonAggregator, Running]:
        instance = CarbonAggregator(options(url), default_static_table(), settings=AGGREGATOR)
        return instance, start(instance.run)

    everything: list[Running] = []
    with no_leftovers(everything):
        first, first_run = aggregator()
        everything.append(first_run)
        await asyncio.wait_for(first.ready.wait(), 20)
        agents = {node: agent(node) for node in NODES}
        everything += [running for _, running in agents.values()]
        await eventually(lambda: first.counters.applied >= 100, "the first deltas reach the ledger")

        # NATS goes away: the agents keep measuring into their spools.
        await asyncio.to_thread(nats_server.stop, crash=True)
        marks = {node: source.cursor for node, source in sources.items()}
        await eventually(
            lambda: all(source.cursor >= marks[node] + 60 for node, source in sources.items()), "agents spool"
        )
        assert all(instance.spool.counters().pending >= 60 for instance, _ in agents.values())

        # While it is away, the agents and the aggregator die too; new agents take over the same spools.
        for _, running in agents.values():
            await running.crash()
        await first_run.crash()
        agents = {node: agent(node) for node in NODES}
        everything += [running for _, running in agents.values()]
        await eventually(lambda: all(source.cursor >= marks[node] + 120 for node, source in sources.items()), "polls")

        await asyncio.to_thread(nats_server.start)
        second, second_run = aggregator()
        everything.append(second_run)
        await asyncio.wait_for(second.ready.wait(), 20)
        assert second.applied_sequence > 0  # restored from the checkpoint, not from zero

        # One more agent crash while it sends the backlog.
        await eventually(lambda: agents[NODES[0]][0].counters.published > 20, "the backlog is being sent")
        await agents[NODES[0]][1].crash()
        agents[NODES[0]] = agent(NODES[0])
        everything.append(agents[NODES[0]][1])

        await eventually(lambda: all(source.done for source in sources.values()), "the traces end", timeout_s=30)
        await eventually(lambda: matches(second.ledger, expected), "the ledger holds the trace's energy", 30)
        for _, running in agents.values():
            await running.finish()
        await asyncio.sleep(0.5)  # anything sent twice would arrive now
        assert matches(second.ledger, expected)
        assert all(instance.spool.counters().pending == 0 for instance, _ in agents.values())
        assert all(instance.spool.counters().dropped == 0 for instance, _ in agents.values())
        assert not second.counters.bad_messages
        await second_run.finish()

    # A third aggregator restores the final checkpoint; the per-workload totals in the bucket agree.
    third = CarbonAggregator(options(url), default_static_table(), settings=AGGREGATOR)
    third_run = start(third.run)
    await asyncio.wait_for(third.ready.wait(), 20)
    await third_run.finish()
    assert matches(third.ledger, expected)
    client = await nats.connect(url)
    try:
        kv = await ensure_carbon_bucket(client.jetstream())
        stored = await workload_carbon(kv, "team-a", WorkloadKind.TRAINING_JOB.value, "llm.v2")
    finally:
        await client.close()
    assert stored is not None
    train, data = WORKLOADS[0], WORKLOADS[1]
    assert train is not None and data is not None
    assert math.isclose(stored.energy_j, expected[train] + expected[data], rel_tol=1e-9)
    assert set(stored.stages) == {Stage.TRAIN, Stage.DATA}
    assert stored.gco2e > 0


async def test_malformed_messages_are_counted_and_terminated_never_fatal(nats_server: NatsServer) -> None:
    aggregator = CarbonAggregator(options(nats_server.url), default_static_table(), settings=AGGREGATOR)
    running = start(aggregator.run)
    with no_leftovers([running]):
        await asyncio.wait_for(aggregator.ready.wait(), 20)
        good = CarbonEnergy.of(TraceSource("node-x", count=1).deltas[0])
        client = await nats.connect(nats_server.url)
        try:
            js = client.jetstream()
            await js.publish(carbon_energy_subject("node-x"), b"\x00 not json")
            await js.publish(carbon_energy_subject("node-y"), encode_carbon(good))  # the body names node-x
            await js.publish(good.subject, encode_carbon(good), headers={MSG_ID_HEADER: good.msg_id})
            await js.publish(good.subject, encode_carbon(good), headers={MSG_ID_HEADER: good.msg_id})  # deduped
        finally:
            await client.close()
        await eventually(lambda: aggregator.counters.applied == 1, "the good delta is applied")
        await running.finish()
    assert aggregator.counters.bad_messages == {"not_json": 1, "subject_mismatch": 1}
    assert good.key is not None
    assert aggregator.ledger.totals(good.key).energy_j == good.energy_j
    assert aggregator.applied_sequence == 3
