"""The servers' load against a real nats-server: the LoadReporter's puts, the autoscaler's read of one service's
pods (bad and misfiled entries skipped), the key removed on stop, and a reporter that never holds up its server
when there is no NATS to talk to."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from polling import eventually

from moeops.bus.connection import ConnectionOptions
from moeops.bus.serving_load import ensure_serving_load_bucket, put_load, service_loads
from moeops.bus.serving_messages import ServerLoad
from moeops.devcluster.controlplane import free_port
from moeops.devcluster.nats_server import NatsServer
from moeops.serving.load_reporter import LoadReporter, LoadSample

pytestmark = pytest.mark.nats


def load(service: str, pod: str, in_flight: int) -> ServerLoad:
    return ServerLoad(namespace="ns", service=service, pod=pod, in_flight=in_flight, measured_at_unix_s=time.time())


async def test_reporter_puts_the_load_and_removes_it_on_stop(nats_server: NatsServer) -> None:
    samples = iter(LoadSample(in_flight=n, queued=1, tokens_per_second=10.0 * n) for n in range(1, 1000))
    reporter = LoadReporter(
        ConnectionOptions(servers=(nats_server.url,)), "ns", "chat", "chat-0", sample=lambda: next(samples),
        interval_s=0.1,
    )  # fmt: skip
    client = await nats.connect(nats_server.url)
    try:
        kv = await ensure_serving_load_bucket(client.jetstream())
        await put_load(kv, load("chat", "chat-1", 5))
        await put_load(kv, load("other", "other-0", 7))  # another service: not chat's load
        await kv.put("ns.chat.broken", b"{not json")
        await kv.put("ns.chat.misfiled", load("chat", "chat-1", 99).model_dump_json().encode())
        reporter.start()
        await eventually(lambda: reporter.sent >= 3, "three loads reported", timeout_s=10)
        assert reporter.failed == 0
        loads = {x.pod: x for x in await service_loads(kv, "ns", "chat")}
        assert sorted(loads) == ["chat-0", "chat-1"]
        assert loads["chat-0"].in_flight >= 1 and loads["chat-0"].queued == 1 and loads["chat-1"].in_flight == 5
        await reporter.stop()
        assert [x.pod for x in await service_loads(kv, "ns", "chat")] == ["chat-1"]
        assert await service_loads(kv, "ns", "nobody") == []
    finally:
        await reporter.stop()
        await client.close()


async def test_reporter_without_a_server_never_blocks_or_raises() -> None:
    def broken() -> LoadSample:
        raise RuntimeError("a bug in the server's counters")

    options = ConnectionOptions(servers=(f"nats://127.0.0.1:{free_port()}",), connect_timeout_s=0.2)
    reporter = LoadReporter(options, "ns", "chat", "chat-0", sample=broken, interval_s=0.05)
    started = time.monotonic()
    reporter.start()
    await asyncio.sleep(0.3)  # the server keeps serving meanwhile: this coroutine runs on the same loop
    assert await reporter.report_once() is False
    await reporter.stop()
    assert time.monotonic() - started < 3.0 and reporter.sent == 0 and reporter.failed >= 1


async def test_a_bad_sample_is_counted_not_raised(nats_server: NatsServer) -> None:
    options = ConnectionOptions(servers=(nats_server.url,))
    reporter = LoadReporter(options, "ns", "chat", "chat-0", sample=lambda: LoadSample(in_flight=-1), interval_s=0.05)
    reporter.start()
    try:
        await eventually(lambda: reporter.failed >= 2, "two bad samples counted", timeout_s=10)
        assert reporter.sent == 0
    finally:
        await reporter.stop()


def test_from_environment_needs_a_bus_and_a_pod_name() -> None:
    sample = lambda: LoadSample(0)  # noqa: E731
    assert LoadReporter.from_environment("chat", "ns", sample=sample, environ={}) is None
    environ = {"MOEOPS_NATS_URL": "nats://nats:4222", "MOEOPS_POD_NAME": "chat-5f-abc"}
    reporter = LoadReporter.from_environment("chat", "ns", sample=sample, environ=environ)
    assert reporter is not None
    with pytest.raises(ValueError):
        LoadReporter(ConnectionOptions(), "ns", "chat", "a b", sample=sample)
