"""The bus against a real nats-server with JetStream: metrics through the stream, the sink while the server is
down, lost and back, dedup, the plans bucket, bad bytes on the wire, and authentication from the environment."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.errors
import nkeys
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from polling import eventually

from moeops.api import env
from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.messages import BadMessage, BadMessageReason, RebalancePlan, WorkerMetrics, decode, encode
from moeops.bus.publisher import NatsMetricsSink
from moeops.bus.streams import (
    MetricsRetention,
    ensure_metrics_stream,
    ensure_plans_bucket,
    latest_plan,
    put_plan,
)
from moeops.bus.subjects import METRICS_STREAM, metrics_filter, metrics_subject, plan_key, plans_filter
from moeops.devcluster.nats_server import NatsServer
from moeops.rebalancer.load import Ingested, LoadAggregator
from moeops.trainer.metrics import StepMetrics

pytestmark = pytest.mark.nats

NAMESPACE, JOB = "team-a", "llm.v2"
NatsServerFactory = Callable[..., NatsServer]  # the fixture of the same name (conftest.py)


def record(step: int, rank: int = 0) -> StepMetrics:
    return StepMetrics(
        step=step,
        rank=rank,
        loss=3.0 - step / 100,
        aux_loss=0.01,
        tokens=2048,
        step_seconds=0.2,
        compute_seconds=0.15,
        comm_seconds=0.05,
        lr=1e-3,
        tokens_per_expert=[[step, 1, 2, 3]],
        max_memory_bytes=123,
    )


def fast_options(url: str, **changes: object) -> ConnectionOptions:
    """Production options with test-sized waits (the backoff shape is the same)."""
    fields: dict[str, object] = {"servers": (url,), "name": "test", "reconnect_wait_s": 0.05}
    return ConnectionOptions(**(fields | changes))  # type: ignore[arg-type]


def sink_for(url: str, *, world_size: int = 1, **changes: object) -> NatsMetricsSink:
    settings: dict[str, object] = {"publish_timeout_s": 1.0, "close_timeout_s": 5.0} | changes
    return NatsMetricsSink(fast_options(url), namespace=NAMESPACE, job=JOB, world_size=world_size, **settings)  # type: ignore[arg-type]


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=3)
    try:
        yield client, client.jetstream()
    finally:
        await client.close()


async def stored(js: JetStreamContext, count: int) -> list[Msg]:
    """The first `count` messages the metrics stream holds for our job (an ephemeral pull consumer)."""
    subscription = await js.pull_subscribe(metrics_filter(NAMESPACE, JOB), stream=METRICS_STREAM)
    messages: list[Msg] = []
    deadline = time.monotonic() + 10
    while len(messages) < count and time.monotonic() < deadline:
        try:
            messages += await subscription.fetch(count - len(messages), timeout=1)
        except nats.errors.TimeoutError:
            continue
    await subscription.unsubscribe()
    return messages


async def stored_metrics(js: JetStreamContext, count: int) -> list[WorkerMetrics]:
    decoded = [decode(msg.subject, msg.data) for msg in await stored(js, count)]
    assert all(isinstance(message, WorkerMetrics) for message in decoded)
    return decoded  # type: ignore[return-value]


async def close(sink: NatsMetricsSink) -> None:
    await asyncio.to_thread(sink.close)  # it blocks up to its close timeout; keep this loop responsive


async def test_metrics_reach_the_stream_and_every_subscriber(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (client, js):
        await ensure_metrics_stream(js)
        heard: list[Msg] = []

        async def listen(msg: Msg) -> None:
            heard.append(msg)

        await client.subscribe(metrics_filter(NAMESPACE), cb=listen)  # the rebalancer's fast path
        await client.flush()
        sinks = [sink_for(nats_server.url, world_size=2) for _ in range(2)]
        for step in range(5):
            for rank, sink in enumerate(sinks):
                sink.publish(record(step, rank))
        before_close = time.time()
        for sink in sinks:
            await close(sink)
            counters = sink.counters()
            assert (counters.sent, counters.dropped, counters.unstored, counters.pending) == (5, 0, 0, 0)

        received = await stored_metrics(js, 10)
        assert sorted((m.rank, m.step) for m in received) == [(rank, step) for rank in (0, 1) for step in range(5)]
        one = next(m for m in received if (m.rank, m.step) == (1, 3))
        assert (one.namespace, one.job, one.world_size, one.subject) == (
            NAMESPACE,
            JOB,
            2,
            metrics_subject(NAMESPACE, JOB, 1),
        )
        assert one.tokens_per_expert == [] and one.loss == record(3).loss  # rank 0 alone sends the counts
        zero = next(m for m in received if (m.rank, m.step) == (0, 3))
        assert zero.tokens_per_expert == [[3, 1, 2, 3]]
        assert before_close - 30 < one.measured_at_unix_s <= before_close
        await eventually(lambda: len(heard) == 10, "core subscribers hear every JetStream publish")


async def test_a_retried_step_is_stored_twice_and_read_once(nats_server: NatsServer) -> None:
    """No Nats-Msg-Id on metrics (its parsing costs the rebalancer a third of its budget): the stream keeps a step
    published again after a lost ack, and the rebalancer's aggregator drops the copy as a duplicate."""
    async with jetstream(nats_server.url) as (_, js):
        await ensure_metrics_stream(js)
        first = sink_for(nats_server.url)
        first.publish(record(3))
        await close(first)
        subscription = await js.pull_subscribe(metrics_subject(NAMESPACE, JOB, 0), durable="twice")
        (stored,) = await subscription.fetch(1, timeout=5)
        await js.publish(stored.subject, stored.data)  # the same bytes again: a retry after a lost ack
        second = sink_for(nats_server.url)
        second.publish(record(4))
        await close(second)
        assert (first.counters().sent, second.counters().sent) == (1, 1)
        assert (await js.stream_info(METRICS_STREAM)).state.messages == 3
        rest = await subscription.fetch(2, timeout=5)
        assert all(message.headers is None for message in [stored, *rest])
        aggregator = LoadAggregator()
        outcomes = [aggregator.ingest(decode(m.subject, m.data)) for m in [stored, *rest]]  # type: ignore[arg-type]
        assert outcomes == [Ingested.ACCEPTED, Ingested.DUPLICATE, Ingested.ACCEPTED]


async def test_a_record_that_does_not_fit_costs_only_itself(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (_, js):
        await ensure_metrics_stream(js)
        sink = sink_for(nats_server.url, world_size=2)
        sink.publish(record(0))
        sink.publish(object())  # type: ignore[arg-type]  # no StepMetrics attributes
        sink.publish(record(1, rank=5))  # outside the world of 2
        sink.publish(record(2))
        await close(sink)
        counters = sink.counters()
        assert (counters.sent, counters.dropped) == (2, 2)
        assert sorted(m.step for m in await stored_metrics(js, 2)) == [0, 2]


def test_publish_returns_at_once_and_counts_while_nats_is_down(nats_server: NatsServer) -> None:
    url = nats_server.url
    nats_server.stop()
    sink = sink_for(url, capacity=100, close_timeout_s=0.5)
    slowest = 0.0
    for step in range(3000):
        started = time.perf_counter()
        sink.publish(record(step))
        slowest = max(slowest, time.perf_counter() - started)
    counters = sink.counters()
    assert (counters.sent, counters.pending, counters.dropped) == (0, 100, 2900), counters  # the oldest went first
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 5, "close() gives up on an absent server"
    counters = sink.counters()
    assert (counters.sent, counters.pending, counters.dropped) == (0, 0, 3000)
    sink.publish(record(3000))  # after close: counted, never raised
    assert sink.dropped == 3001
    print(f"slowest publish() of 3000 with NATS down: {slowest * 1e3:.3f} ms")


async def test_metrics_flow_once_a_late_server_comes_up(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (_, js):
        await ensure_metrics_stream(js)
    nats_server.stop()
    sink = sink_for(nats_server.url)
    for step in range(3):
        sink.publish(record(step))
    await asyncio.sleep(0.3)
    assert (sink.sent, sink.counters().pending) == (0, 3)
    nats_server.start()  # same port, same store
    await eventually(lambda: sink.sent == 3, "buffered metrics delivered once the server is up")
    sink.publish(record(3))
    await eventually(lambda: sink.sent == 4, "new metrics flow")
    await close(sink)
    async with jetstream(nats_server.url) as (_, js):
        assert sorted(m.step for m in await stored_metrics(js, 4)) == [0, 1, 2, 3]


async def test_a_server_lost_mid_run_costs_no_metrics_once_it_returns(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (_, js):
        await ensure_metrics_stream(js)
    sink = sink_for(nats_server.url)
    for step in range(10):
        sink.publish(record(step))
    await eventually(lambda: sink.sent == 10, "metrics flow")
    nats_server.stop(crash=True)
    for step in range(10, 20):
        sink.publish(record(step))  # returns at once: buffered while nats-py reconnects
    await asyncio.sleep(0.3)
    nats_server.start()
    for step in range(20, 30):
        sink.publish(record(step))
    await eventually(lambda: sink.sent == 30, "metrics published during and after the outage arrive")
    await close(sink)
    assert sink.counters().dropped == 0
    async with jetstream(nats_server.url) as (_, js):
        assert sorted(m.step for m in await stored_metrics(js, 30)) == list(range(30))
        assert (await js.stream_info(METRICS_STREAM)).state.messages == 30  # retries deduplicated


async def test_without_a_stream_metrics_still_reach_live_subscribers(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (client, _):
        heard: list[Msg] = []

        async def listen(msg: Msg) -> None:
            heard.append(msg)

        await client.subscribe(metrics_filter(), cb=listen)
        await client.flush()
        sink = sink_for(nats_server.url)
        sink.publish(record(0))
        sink.publish(record(1))
        await close(sink)
        counters = sink.counters()
        assert (counters.sent, counters.unstored, counters.dropped) == (2, 2, 0)
        await eventually(lambda: len(heard) == 2, "plain publishes heard")
        assert [decode(m.subject, m.data).step for m in heard] == [0, 1]  # type: ignore[union-attr]


async def test_stream_setup_is_idempotent_and_applies_new_limits(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (_, js):
        first = await ensure_metrics_stream(js)
        again = await ensure_metrics_stream(js)
        assert first.config.subjects == again.config.subjects == ["moeops.metrics.>"]
        assert again.config.max_age == 3600 and again.config.max_msgs_per_subject == 1000
        changed = await ensure_metrics_stream(js, MetricsRetention(max_age_s=600, max_msgs_per_subject=50))
        assert changed.config.max_age == 600 and changed.config.max_msgs_per_subject == 50


async def test_bad_bytes_on_the_wire_are_classified_not_fatal(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (client, js):
        await ensure_metrics_stream(js)
        good = WorkerMetrics.from_step(record(1), namespace=NAMESPACE, job=JOB, world_size=1, measured_at_unix_s=1.0)
        subject = good.subject
        wrong_version = encode(good).replace(b'"schema_version":1', b'"schema_version":2')
        for data in [b"\x00garbage", encode(good)[:40], wrong_version, b'{"schema_version":1}', encode(good)]:
            await client.publish(subject, data)
        await client.flush()
        outcomes: collections.Counter[str] = collections.Counter()
        for msg in await stored(js, 5):
            try:
                decode(msg.subject, msg.data)
                outcomes["ok"] += 1
            except BadMessage as bad:
                outcomes[bad.reason.value] += 1
        assert outcomes == {
            BadMessageReason.NOT_JSON.value: 1,
            BadMessageReason.TRUNCATED.value: 1,
            BadMessageReason.WRONG_SCHEMA_VERSION.value: 1,
            BadMessageReason.INVALID.value: 1,
            "ok": 1,
        }


def plan(epoch: int, job: str = JOB) -> RebalancePlan:
    return RebalancePlan(
        namespace=NAMESPACE,
        job=job,
        epoch=epoch,
        apply_at_step=100 * epoch,
        data_shares=[0.5, 0.25, 0.25],
        stage_layers=[(0, 4), (4, 8)],
        expert_placement=[[[0], [1, 2]]],
        predicted_gain=0.1,
        created_at_unix_s=time.time(),
    )


async def test_the_plans_bucket_keeps_each_jobs_latest_plan_and_announces_it(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as (client, js):
        kv = await ensure_plans_bucket(js)
        await ensure_plans_bucket(js)  # idempotent
        assert await latest_plan(kv, NAMESPACE, JOB) is None
        announced: list[Msg] = []

        async def listen(msg: Msg) -> None:
            announced.append(msg)

        await client.subscribe(plans_filter(NAMESPACE), cb=listen)
        await client.flush()

        first = await put_plan(kv, plan(1), last_revision=0)
        second = await put_plan(kv, plan(2), last_revision=first)
        with pytest.raises(KeyWrongLastSequenceError):  # a planner working from a stale plan is refused
            await put_plan(kv, plan(3), last_revision=first)
        await put_plan(kv, plan(7, job="other"))

        latest = await latest_plan(kv, NAMESPACE, JOB)
        assert latest is not None
        assert (latest[0].epoch, latest[1]) == (2, second)
        assert latest[0] == plan(2).model_copy(update={"created_at_unix_s": latest[0].created_at_unix_s})
        assert len(await kv.history(plan_key(NAMESPACE, JOB))) == 1  # last value only
        await eventually(lambda: len(announced) == 3, "every stored plan republished on moeops.plans.*")
        heard = [decode(m.subject, m.data) for m in announced]
        assert [(p.job, p.epoch) for p in heard if isinstance(p, RebalancePlan)] == [(JOB, 1), (JOB, 2), ("other", 7)]


async def test_token_auth_from_the_environment(nats_server_factory: NatsServerFactory) -> None:
    server = nats_server_factory("--auth", "s3cret")
    options = ConnectionOptions.from_env({env.NATS_URL: server.url, env.NATS_TOKEN: "s3cret"}, name="t")
    client = await connect(options)
    assert client.is_connected
    await client.close()
    with pytest.raises(TimeoutError):  # a wrong token is retried (and logged), never raised to the caller
        await asyncio.wait_for(connect(fast_options(server.url, token="wrong")), 1.0)


async def test_mutual_tls_from_the_environment(
    nats_server_factory: NatsServerFactory, tls_certificate: tuple[Path, Path]
) -> None:
    cert, key = (str(path) for path in tls_certificate)
    server = nats_server_factory("--tls", "--tlscert", cert, "--tlskey", key, "--tlsverify", "--tlscacert", cert)
    environ = {env.NATS_URL: server.url, env.NATS_TLS_CA: cert, env.NATS_TLS_CERT: cert, env.NATS_TLS_KEY: key}
    client = await connect(ConnectionOptions.from_env(environ))
    assert client.is_connected and client.connected_url is not None
    await client.close()
    without_client_cert = ConnectionOptions.from_env({env.NATS_URL: server.url, env.NATS_TLS_CA: cert})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connect(without_client_cert), 1.0)


async def test_nkey_auth_from_the_environment(nats_server_factory: NatsServerFactory, tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public_key = nkeys.from_seed(bytearray(seed)).public_key.decode()
    config, seed_file = tmp_path / "auth.conf", tmp_path / "user.nk"
    config.write_text(f'authorization {{ users = [ {{ nkey: "{public_key}" }} ] }}\n')
    seed_file.write_bytes(seed)
    server = nats_server_factory("--config", str(config))
    client = await connect(ConnectionOptions.from_env({env.NATS_URL: server.url, env.NATS_NKEY_SEED: str(seed_file)}))
    assert client.is_connected
    await client.close()
