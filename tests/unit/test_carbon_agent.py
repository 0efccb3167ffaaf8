"""The node agent without a server: a failing source or an unsendable delta costs that reading only, and a NATS
that never answers does not hold up the polls (everything waits in the spool)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

from moeops.bus.connection import ConnectionOptions
from moeops.carbon.agent import AgentSettings, NodeAgent
from moeops.carbon.ledger import DeltaId, EnergyDelta
from moeops.carbon.spool import Spool


def delta(node: str = "node-a") -> EnergyDelta:
    return EnergyDelta(
        id=DeltaId(source=f"{node}/gpu-0", epoch=0, sequence=0),
        node=node,
        region="de",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        key=None,
        gpu_energy_j=5.0,
        cpu_energy_j=0.0,
    )


def unused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{probe.getsockname()[1]}"


def test_a_failing_source_and_an_unsendable_delta_are_counted(tmp_path: Path) -> None:
    calls = iter([RuntimeError("NVML hiccup"), [delta(), delta("node a")]])

    def source() -> list[EnergyDelta]:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    agent = NodeAgent(source, Spool(tmp_path), ConnectionOptions())
    assert agent.poll_once() == 0
    assert agent.poll_once() == 1
    assert (agent.counters.source_errors, agent.counters.invalid, agent.counters.polls) == (1, 1, 2)
    assert agent.spool.counters().pending == 1


async def test_polls_go_on_while_no_server_answers(tmp_path: Path) -> None:
    settings = AgentSettings(poll_interval_s=0.01, drain_timeout_s=0.2)
    options = ConnectionOptions(servers=(unused_url(),), reconnect_wait_s=0.05, reconnect_wait_max_s=0.1)
    agent = NodeAgent(lambda: [delta()], Spool(tmp_path), options, settings)
    stop = asyncio.Event()
    running = asyncio.ensure_future(agent.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert agent.counters.polls >= 20
    assert agent.spool.counters().pending == agent.counters.polls  # all on disk, for the next agent to send
    assert agent.counters.published == 0
