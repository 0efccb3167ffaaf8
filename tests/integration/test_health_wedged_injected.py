"""A wedged service fails /healthz (and a kubelet would restart it), against a real nats-server. The wedges are
injected: a main loop awaiting forever on a responsive event loop (the rebalancer's consumer, the aggregator's
fetch), and a synchronous energy read that blocks the agent's whole event loop (an NVML call hung in the driver).
Each service runs with its health server as its entry point wires them (`service_health`, `aggregator_health`,
`agent_health`), on an event loop of its own in a thread; the test probes over HTTP."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from polling import wait_until

from moeops.bus.connection import ConnectionOptions
from moeops.bus.health import HealthSettings
from moeops.bus.health_server import HealthServer
from moeops.carbon import cli as carbon_cli
from moeops.carbon.accounting.aggregator import CarbonAggregator
from moeops.carbon.accounting.intensity import default_static_table
from moeops.carbon.accounting.ledger import EnergyDelta
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.spool import Spool
from moeops.devcluster.nats_server import NatsServer
from moeops.rebalancer import cli as rebalancer_cli
from moeops.rebalancer.consumer import MetricsConsumer
from moeops.rebalancer.edge import RebalancerService

pytestmark = pytest.mark.nats  # a nats-server and a service per test: 3-5 s each

STALE_S = 1.0
"""The liveness limit in these tests (production: a minute or more)."""
SETTINGS = HealthSettings(addr="127.0.0.1", port=0, stale_after_s=STALE_S)


def options(nats_server: NatsServer) -> ConnectionOptions:
    return ConnectionOptions(servers=(nats_server.url,), name="test", reconnect_wait_s=0.05, reconnect_wait_max_s=0.2)


def probe(health: HealthServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health.port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextmanager
def running(run: Callable[[asyncio.Event], Coroutine[Any, Any, None]], health: HealthServer) -> Iterator[None]:
    """`run` inside `health` on a loop of its own (a thread), as `asyncio.run` in the entry points; cancelled at
    the end (a wedged run never sees its stop)."""
    started = threading.Event()
    handles: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[None]]] = []

    async def main() -> None:
        async with health:
            task = asyncio.create_task(run(asyncio.Event()))
            handles.append((asyncio.get_running_loop(), task))
            started.set()
            with suppress(asyncio.CancelledError):
                await task

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(30), "the service did not start"
    try:
        yield
    finally:
        loop, task = handles[0]
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
        assert not thread.is_alive(), "the service did not end"


def wedge_after(calls: int, answer: Callable[[], object]) -> Callable[..., Coroutine[Any, Any, object]]:
    """An async stand-in that answers `calls` times, then awaits forever (the event loop stays responsive)."""
    count = 0

    async def wedged(*_: object, **__: object) -> object:
        nonlocal count
        count += 1
        if count > calls:
            await asyncio.Event().wait()
        await asyncio.sleep(0.05)
        return answer()

    return wedged


def assert_healthy_then_stale(health: HealthServer, loop_name: str) -> None:
    """/readyz and /healthz 200 first; then /healthz 503 naming `loop_name`, while the loop answers /readyz."""
    wait_until(lambda: probe(health, "/readyz")[0] == 200, "ready", timeout_s=30)
    assert probe(health, "/healthz") == (200, "ok\n")
    wait_until(lambda: probe(health, "/healthz")[0] == 503, "not alive", timeout_s=10 * STALE_S + 10)
    body = probe(health, "/healthz")[1]
    assert f"{loop_name}: no progress for " in body and "event loop" not in body, body
    assert probe(health, "/readyz") == (200, "ok\n")  # the event loop itself answers


def test_a_rebalancer_whose_main_loop_hangs_fails_liveness_injected(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MetricsConsumer, "next_batch", wedge_after(20, list))
    service = RebalancerService(options(nats_server))
    health = rebalancer_cli.service_health(service, SETTINGS)
    with running(service.run, health):
        assert_healthy_then_stale(health, "rebalancer's main loop")
        assert service.heartbeat.beats == 21  # the loop went round until the wedge, then never again


def test_an_aggregator_whose_fetch_hangs_fails_liveness_injected(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CarbonAggregator, "_fetch", wedge_after(20, list))
    aggregator = CarbonAggregator(options(nats_server), default_static_table())
    health = carbon_cli.aggregator_health(aggregator, SETTINGS)
    with running(aggregator.run, health):
        assert_healthy_then_stale(health, "carbon aggregator's main loop")


@pytest.mark.slow
def test_an_agent_whose_energy_read_blocks_the_event_loop_fails_liveness_injected(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    blocked, release = threading.Event(), threading.Event()

    def source() -> Sequence[EnergyDelta]:
        if blocked.is_set():
            release.wait(60)  # a synchronous read that hangs: nothing else runs on the agent's loop meanwhile
        return []

    agent = NodeAgent(source, Spool(tmp_path / "spool"), options(nats_server), AgentSettings(poll_interval_s=0.1))
    health = carbon_cli.agent_health(agent, SETTINGS)
    with running(agent.run, health):
        try:
            wait_until(lambda: probe(health, "/readyz")[0] == 200, "ready", timeout_s=30)
            assert probe(health, "/healthz") == (200, "ok\n")
            blocked.set()
            wait_until(lambda: probe(health, "/healthz")[0] == 503, "not alive", timeout_s=10 * STALE_S + 10)
            # Answered by the server's own thread: the blocked loop, and (within a tick) the poller behind it.
            both = ("carbon agent's event loop: no progress for ", "carbon agent's poller: no progress for ")
            wait_until(lambda: all(r in probe(health, "/healthz")[1] for r in both), "both named", timeout_s=5)
            status, body = probe(health, "/readyz")
            assert status == 503 and "did not answer within" in body, body
        finally:
            blocked.clear()
            release.set()
        wait_until(lambda: probe(health, "/healthz")[0] == 200, "alive again", timeout_s=10)
