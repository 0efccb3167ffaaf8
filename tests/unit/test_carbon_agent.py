"""The node agent without a server: a failing source or an unsendable delta costs that reading only, a NATS that
never answers does not hold up the polls (everything waits in the spool), and a sampled source is only sampled
between commits."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

from moeops.bus.connection import ConnectionOptions
from moeops.carbon.accounting.ledger import DeltaId, EnergyDelta
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.spool import Spool


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
    results: list[Exception | list[EnergyDelta]] = [RuntimeError("NVML hiccup"), [delta(), delta("node a")]]
    calls = iter(results)

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
    for _ in range(200):  # up to 10 s for 20 polls of 10 ms, not a fixed 0.5 s: a busy machine slows the loop
        if agent.counters.polls >= 20 or running.done():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert agent.counters.polls >= 20
    assert agent.spool.counters().pending == agent.counters.polls  # all on disk, for the next agent to send
    assert agent.counters.published == 0


class SampledSource:
    """Records the agent's calls: `sample` between commits, a call (one delta) per commit."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def sample(self) -> None:
        self.calls.append("sample")

    def __call__(self) -> list[EnergyDelta]:
        self.calls.append("commit")
        return [delta()]


def test_a_sampled_source_is_committed_once_per_commit_interval(tmp_path: Path) -> None:
    now_s = [0.0]
    source = SampledSource()
    settings = AgentSettings(poll_interval_s=0.1, commit_interval_s=1.0)
    agent = NodeAgent(source, Spool(tmp_path), ConnectionOptions(), settings, clock=lambda: now_s[0])
    for tick in range(35):
        now_s[0] = tick * 0.1  # 0.1 × 10 is not exactly 1.0: the half-poll tolerance keeps the cadence
        agent.poll_once()
    assert [tick for tick, call in enumerate(source.calls) if call == "commit"] == [0, 10, 20, 30]
    assert source.calls.count("sample") == 31
    assert agent.poll_once(commit=True) == 1  # stopping: the last poll commits whatever is due or not
    assert (agent.counters.polls, agent.counters.commits, agent.spool.counters().pending) == (36, 5, 5)


async def test_run_samples_between_commits_and_commits_when_it_stops(tmp_path: Path) -> None:
    settings = AgentSettings(poll_interval_s=0.01, commit_interval_s=0.1, drain_timeout_s=0.1)
    options = ConnectionOptions(servers=(unused_url(),), reconnect_wait_s=0.05, reconnect_wait_max_s=0.1)
    source = SampledSource()
    agent = NodeAgent(source, Spool(tmp_path), options, settings)
    stop = asyncio.Event()
    running = asyncio.ensure_future(agent.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(running, 5)
    commits = source.calls.count("commit")
    assert source.calls[-1] == "commit"
    assert 2 <= commits <= 7  # about one per 0.1 s, and the last
    assert source.calls.count("sample") > 2 * commits
    assert agent.spool.counters().pending == commits
