"""The trainer publishes every rank's step metrics on NATS (a real nats-server), and losing the server mid-run
costs the training nothing: it finishes, and the metrics flow again once the server is back."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import nats
import nats.errors
import pytest
from polling import wait_until
from trainer_runs import train, train_cmd, train_env, write_config

from moeops.api import env
from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.bus.buckets import ensure_progress_bucket, latest_progress
from moeops.bus.messages import WorkerMetrics, decode
from moeops.bus.progress import JobProgress
from moeops.bus.streams import ensure_metrics_stream
from moeops.bus.subjects import METRICS_STREAM, metrics_filter
from moeops.devcluster.nats_server import NatsServer

pytestmark = pytest.mark.slow  # torchrun workers publishing to a nats-server

NAMESPACE, JOB = "local", "test"  # what trainer_runs.write_config names the job


async def _ensure_stream(url: str) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        await ensure_metrics_stream(client.jetstream())
    finally:
        await client.close()


async def _stored(url: str) -> list[WorkerMetrics]:
    """Everything the metrics stream holds for the job."""
    client = await nats.connect(url, connect_timeout=2)
    try:
        js = client.jetstream()
        subscription = await js.pull_subscribe(metrics_filter(NAMESPACE, JOB), stream=METRICS_STREAM)
        found: list[WorkerMetrics] = []
        while True:
            try:
                batch = await subscription.fetch(100, timeout=3)
            except (nats.errors.TimeoutError, TimeoutError):  # asyncio's too, raised from inside the fetch
                break
            for msg in batch:
                message = decode(msg.subject, msg.data)
                assert isinstance(message, WorkerMetrics)
                found.append(message)
        return found
    finally:
        await client.close()


async def _stored_count(url: str) -> int:
    client = await nats.connect(url, connect_timeout=2)
    try:
        return (await client.jetstream().stream_info(METRICS_STREAM)).state.messages
    finally:
        await client.close()


async def _progress(url: str) -> JobProgress | None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        return await latest_progress(await ensure_progress_bucket(client.jetstream()), NAMESPACE, JOB)
    finally:
        await client.close()


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_every_rank_publishes_every_step(nats_server: NatsServer, tmp_path: Path) -> None:
    asyncio.run(_ensure_stream(nats_server.url))
    result = train(write_config(tmp_path, data=2, steps=6), 2, env=train_env(**{env.NATS_URL: nats_server.url}))
    assert result.returncode == 0, result.stderr[-3000:]
    stored = asyncio.run(_stored(nats_server.url))
    assert sorted((m.rank, m.step) for m in stored) == [(r, s) for r in (0, 1) for s in range(1, 7)]
    first = next(m for m in stored if m.rank == 0 and m.step == 1)
    assert first.world_size == 2 and first.tokens > 0 and len(first.tokens_per_expert) == 2  # TINY: 2 MoE layers


def test_training_outlives_a_lost_nats_server(nats_server: NatsServer, tmp_path: Path) -> None:
    asyncio.run(_ensure_stream(nats_server.url))
    steps = 300
    config = write_config(tmp_path, data=2, steps=steps, checkpoint_interval=steps)
    proc = subprocess.Popen(
        train_cmd(config, 2), env=train_env(**{env.NATS_URL: nats_server.url}),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    progress = tmp_path / "metrics.rank0.jsonl"
    try:
        wait_until(lambda: _lines(progress) >= 5, "the first steps")
        nats_server.stop(crash=True)
        lost_at = _lines(progress)
        wait_until(lambda: _lines(progress) >= lost_at + 30, "training going on without NATS")
        nats_server.start()
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert _lines(progress) == steps
    late = {(m.rank, m.step) for m in asyncio.run(_stored(nats_server.url)) if m.step > lost_at + 30}
    assert (0, steps) in late and (1, steps) in late  # flowing again after the server came back


def test_a_job_that_does_not_rebalance_reports_its_progress_only(nats_server: NatsServer, tmp_path: Path) -> None:
    """The operator hands every job the bus: one without rebalancing publishes no step metrics and follows no plans,
    but its rank 0 puts the job's progress, the last step included."""
    asyncio.run(_ensure_stream(nats_server.url))
    config = write_config(tmp_path, data=2, steps=6, rebalance=RebalanceSpec(enabled=False))
    result = train(config, 2, env=train_env(**{env.NATS_URL: nats_server.url}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert asyncio.run(_stored_count(nats_server.url)) == 0
    progress = asyncio.run(_progress(nats_server.url))
    assert progress is not None and progress.finished and progress.total_steps == 6, progress
    assert progress.tokens_per_second is not None and progress.tokens_per_second > 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.rank0.jsonl").read_text().splitlines()]
    assert progress.loss == losses[-1]  # what rank 0's progress bar shows for the last step
