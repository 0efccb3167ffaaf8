"""Expert plans with the service in the loop, on CPU with gloo and a real nats-server: with spare slots
(rebalance.expertSpareSlots) the rebalancer's expert plans are applied by the trainer (before, it assumed one copy
per expert and every plan was refused), and rank 0 acknowledges them on the bus."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from plan_acks_bus import create_streams, wait_for_ack
from trainer_runs import train_cmd, train_env, write_config

from moeops.api import env
from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.bus.plan_acks import STARTED, AckOutcome, PlanAck
from moeops.devcluster.nats_server import NatsServer
from moeops.trainer.errors import EXIT_PREEMPTED

pytestmark = pytest.mark.slow  # torchrun workers, a rebalancer process and a nats-server

NAMESPACE, JOB = "local", "test"  # what trainer_runs.write_config names the job
APPLIED = re.compile(r"plan epoch (\d+) applied before step (\d+): shares \[[\d, ]+\], experts ([a-z, ]+), stages")


def _experts_applied(ack: PlanAck) -> bool:
    return ack.outcome is AckOutcome.APPLIED and ack.running.experts != STARTED


def test_expert_plans_with_spare_slots_are_applied_and_acknowledged(nats_server: NatsServer, tmp_path: Path) -> None:
    asyncio.run(create_streams(nats_server.url))
    bus_env = train_env(**{env.NATS_URL: nats_server.url})
    logs = {name: tmp_path / f"{name}.log" for name in ("rebalancer", "trainer")}
    with logs["rebalancer"].open("w") as out:  # files, not pipes: nothing blocks on a full pipe while we wait
        rebalancer = subprocess.Popen([sys.executable, "-m", "moeops.rebalancer", "--min-samples", "3"],
                                      env=bus_env, stderr=out)  # fmt: skip
    # TINY: 4 experts over 2 EP ranks, 2 + 1 slots each; any imbalance of a random router is worth a move of these
    # small experts at this minimum gain. The run is long enough for any step time: a plan applies at least
    # APPLY_LEAD_S after it is made, which was past the end of a 40-step run whose steps were fast (the flaky
    # clean-clone CI run). It is stopped (SIGTERM: checkpoint, exit 143) once rank 0 acknowledged an expert plan.
    spare = RebalanceSpec(expert_spare_slots=1, min_gain=0.001, interval_steps=10)
    config = write_config(tmp_path, data=2, expert=2, steps=2000, rebalance=spare, checkpoint_interval=2000)
    with logs["trainer"].open("w") as out:
        trainer = subprocess.Popen(train_cmd(config, 2), env=bus_env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        ack = wait_for_ack(nats_server.url, NAMESPACE, JOB, _experts_applied, "an expert plan applied",
                           timeout_s=240, alive=lambda: trainer.poll() is None)  # fmt: skip
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=120)
        rebalancer.terminate()
        rebalancer.wait(timeout=10)
    trainer_log, rebalancer_log = (logs[name].read_text() for name in ("trainer", "rebalancer"))
    assert trainer.returncode == EXIT_PREEMPTED, trainer_log[-3000:]
    moved = [match for match in APPLIED.finditer(trainer_log) if match.group(3).startswith("moved")]
    assert moved, f"no expert plan applied.\ntrainer: {trainer_log[-2000:]}\nrebalancer: {rebalancer_log[-2000:]}"
    assert "not applied" not in trainer_log, trainer_log[-3000:]
    assert ack.refused == [] and ack.running.experts >= int(moved[0].group(1)), ack
