"""A job's progress over a real nats-server: rank 0's ProgressPutter writes the KV bucket and the operator's BusReader
reads back the same JobProgress (one model at both ends); at most one put an interval, the last step at once and on
close; a putter without a server, or one that loses it, never holds up training."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from polling import wait_until

from moeops.bus.buckets import ensure_progress_bucket, latest_progress
from moeops.bus.connection import ConnectionOptions
from moeops.bus.progress import JobProgress
from moeops.bus.progress_putter import ProgressPutter
from moeops.devcluster.controlplane import free_port
from moeops.devcluster.nats_server import NatsServer
from moeops.operator.bus_reader import BusReader

pytestmark = pytest.mark.nats

NAMESPACE, JOB = "ml", "moe.big"


@dataclass(frozen=True)
class Step:
    """What the trainer's StepMetrics carries (`moeops.bus.records.StepRecord`)."""

    step: int
    loss: float = 2.5
    step_seconds: float = 0.01
    rank: int = 0
    aux_loss: float = 0.0
    tokens: int = 64
    compute_seconds: float = 0.01
    comm_seconds: float = 0.0
    lr: float = 1e-3
    tokens_per_expert: list[list[int]] = field(default_factory=list)
    max_memory_bytes: int = 0


def putter(url: str, *, total_steps: int, interval_s: float, **options: float) -> ProgressPutter:
    connection = ConnectionOptions(servers=(url,), **options)  # type: ignore[arg-type]
    return ProgressPutter(connection, namespace=NAMESPACE, job=JOB, total_steps=total_steps, tokens_per_step=1024,
                          interval_s=interval_s, put_timeout_s=1.0)  # fmt: skip


def read(url: str) -> JobProgress | None:
    """What the operator's progress timer reads."""

    async def once() -> JobProgress | None:
        reader = BusReader(ConnectionOptions(servers=(url,)))
        try:
            return await reader.read(
                ensure_progress_bucket, lambda kv: latest_progress(kv, NAMESPACE, JOB), f"progress of {JOB}"
            )
        finally:
            await reader.close()

    return asyncio.run(once())


def step_read(url: str) -> int | None:
    found = read(url)
    return None if found is None else found.step


def test_what_rank_0_puts_is_what_the_operator_reads(nats_server: NatsServer) -> None:
    sink = putter(nats_server.url, total_steps=10, interval_s=0.2)
    try:
        sink.publish(Step(1, loss=3.0, step_seconds=0.5))
        sink.publish(Step(2, loss=2.75, step_seconds=0.5))
        wait_until(lambda: step_read(nats_server.url) == 2, "step 2 in the bucket", timeout_s=20)
        found = read(nats_server.url)
        assert isinstance(found, JobProgress)
        assert (found.namespace, found.job, found.step, found.total_steps, found.loss) == (NAMESPACE, JOB, 2, 10, 2.75)
        assert found.tokens_per_second is not None and found.tokens_per_second > 0
        assert found.eta_seconds is not None and found.eta_seconds > 0
        assert abs(found.measured_at_unix_s - time.time()) < 30
    finally:
        sink.close()
    assert sink.failed == 0


def test_one_put_an_interval_but_the_last_step_at_once(nats_server: NatsServer) -> None:
    sink = putter(nats_server.url, total_steps=5, interval_s=60.0)
    try:
        for n in range(1, 5):
            sink.publish(Step(n))
        time.sleep(1.0)
        assert read(nats_server.url) is None  # the first interval has not passed
        sink.publish(Step(5, loss=1.25))
        wait_until(lambda: step_read(nats_server.url) == 5, "the last step, without waiting the interval", 10)
        assert sink.sent == 1
    finally:
        sink.close()
    last = read(nats_server.url)
    assert last is not None and last.finished and last.loss == 1.25 and last.eta_seconds == 0.0
    assert sink.sent == 1  # nothing new since the last step: close() had nothing to put


def test_close_puts_the_newest_step(nats_server: NatsServer) -> None:
    """A job stopped early (preempted, or `--max-steps`) still shows where it got to."""
    sink = putter(nats_server.url, total_steps=100, interval_s=60.0)
    for n in range(1, 8):
        sink.publish(Step(n))
    sink.close()
    assert step_read(nats_server.url) == 7
    sink.publish(Step(8))  # after close: ignored, never raises
    assert step_read(nats_server.url) == 7


def test_without_a_server_training_is_never_held_up() -> None:
    sink = putter(f"nats://127.0.0.1:{free_port()}", total_steps=1000, interval_s=0.05, connect_timeout_s=0.2)
    started = time.monotonic()
    for n in range(1, 1001):
        sink.publish(Step(n))
    published = time.monotonic() - started
    sink.close()
    assert published < 1.0, f"1000 steps took {published:.2f}s to hand over"
    assert time.monotonic() - started < 5.0 and sink.sent == 0


def test_puts_resume_when_a_lost_server_comes_back(nats_server: NatsServer) -> None:
    sink = putter(nats_server.url, total_steps=1000, interval_s=0.1, reconnect_wait_max_s=0.5)
    try:
        sink.publish(Step(1))
        wait_until(lambda: step_read(nats_server.url) == 1, "step 1 in the bucket", timeout_s=20)
        nats_server.stop(crash=True)
        started = time.monotonic()
        for n in range(2, 50):
            sink.publish(Step(n))
            time.sleep(0.01)
        assert time.monotonic() - started < 2.0  # training went on at its own pace
        nats_server.start()
        sink.publish(Step(50))
        wait_until(lambda: step_read(nats_server.url) == 50, "step 50 after the server came back", timeout_s=30)
    finally:
        sink.close()


def test_a_checkpoint_written_after_the_last_step_is_still_reported(nats_server: NatsServer) -> None:
    """The trainer saves after it published the step: the putter reads the newest checkpoint at each put and puts
    again when only it changed (what lets an InferenceService find the final checkpoint)."""
    newest: list[int | None] = [None]
    connection = ConnectionOptions(servers=(nats_server.url,))
    sink = ProgressPutter(connection, namespace=NAMESPACE, job=JOB, total_steps=4, tokens_per_step=1024,
                          interval_s=0.2, put_timeout_s=1.0, newest_checkpoint=lambda: newest[0])  # fmt: skip
    for n in range(1, 5):
        sink.publish(Step(n))
    wait_until(lambda: step_read(nats_server.url) == 4, "the last step")
    first = read(nats_server.url)
    assert first is not None and first.checkpoint_step is None
    newest[0] = 4  # the final save lands after the last step was put
    wait_until(lambda: (p := read(nats_server.url)) is not None and p.checkpoint_step == 4, "the final checkpoint")
    sink.close()
