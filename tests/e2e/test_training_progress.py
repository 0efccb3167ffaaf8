"""Rank 0's progress reaches `.status.progress` and `kubectl get mtj -o wide` through the operator (real control
plane, real nats-server: the test puts the progress the way the trainer's rank 0 does, into the progress KV bucket;
the fake kubelet runs and ends the pods)."""

from __future__ import annotations

import asyncio
import time

import nats
from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job
from test_training_lifecycle import PLURAL, wait_pods, wait_state

from missing import NATS_SERVER, missing
from moeops.bus.buckets import ensure_progress_bucket, put_progress
from moeops.bus.progress import JobProgress
from moeops.devcluster import FakeKubelet
from moeops.devcluster.nats_server import NatsServer

TICKS_S = 3.0
"""A few of the operator's progress ticks (MOEOPS_PROGRESS_INTERVAL_S=1 in the e2e operator)."""


async def _put(url: str, progress: JobProgress) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        await put_progress(await ensure_progress_bucket(client.jetstream()), progress)
    finally:
        await client.close()


def test_rank_0s_progress_shows_while_running_and_its_last_step_after_success(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, bus: NatsServer | None, namespace: str
) -> None:
    if bus is None:
        missing(NATS_SERVER)
    name = "progressing"
    cluster.kubectl.apply(training_job(name, namespace, {"training": {"steps": 200}}))
    for pod in wait_pods(cluster, namespace, name, 2):
        kubelet.run(pod)
    assert wait_state(cluster, namespace, name, "Running")["progress"] == {"step": 0, "totalSteps": 200, "percent": 0}

    def progress(step: int, **figures: float) -> JobProgress:
        return JobProgress(namespace=namespace, job=name, step=step, total_steps=200, loss=figures.pop("loss", 2.0),
                           measured_at_unix_s=figures.pop("at", time.time()), **figures)  # fmt: skip

    asyncio.run(_put(bus.url, progress(190, at=time.time() - 3600)))  # an earlier job of the same name left it
    time.sleep(TICKS_S)
    assert cluster.status(PLURAL, namespace, name)["progress"]["step"] == 0

    asyncio.run(_put(bus.url, progress(57, loss=2.3456789, tokens_per_second=1234.56, eta_seconds=100.2)))
    shown = wait_for(
        "status.progress from rank 0's report",
        lambda: (p := cluster.status(PLURAL, namespace, name)["progress"])["step"] == 57 and p,
        timeout=30,
    )
    assert shown == {"step": 57, "totalSteps": 200, "percent": 28, "loss": 2.3457, "tokensPerSecond": 1234.6,
                     "etaSeconds": 101}  # fmt: skip
    wide = cluster.kubectl("get", "mtj", name, "-n", namespace, "-o", "wide").stdout.split("\n")
    columns = dict(zip(wide[0].split(), wide[1].split(), strict=False))
    assert (columns["PROGRESS"], columns["LOSS"], columns["TOKENS/S"]) == ("28", "2.3457", "1234.6"), wide

    asyncio.run(_put(bus.url, progress(200, loss=1.5, tokens_per_second=1300.0, eta_seconds=0.0)))
    for pod in wait_pods(cluster, namespace, name, 2, phase="Running"):
        kubelet.finish(pod, exit_code=0)
    wait_state(cluster, namespace, name, "Succeeded")
    final = wait_for(
        "the last step in status",
        lambda: (p := cluster.status(PLURAL, namespace, name)["progress"])["step"] == 200 and p,
        timeout=30,
    )
    assert final["percent"] == 100 and final["loss"] == 1.5 and final["etaSeconds"] == 0

    time.sleep(TICKS_S)  # the finished job's progress was read once more; no later value is copied
    asyncio.run(_put(bus.url, progress(120)))
    time.sleep(TICKS_S)
    assert cluster.status(PLURAL, namespace, name)["progress"]["step"] == 200
