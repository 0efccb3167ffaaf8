"""Scaling decisions on the real control plane from scripted NATS load: the test writes two server pods' load into
the `moeops-serving-load` bucket the way `moeops.serving.load_reporter` does, and watches the operator set the
Deployment's replicas (no server runs: the pods the Deployment asks for stay Pending, which the autoscaler does not
look at; it reads only the bucket)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
from harness import Cluster, OperatorProcess, wait_for
from manifests import inference_service

from missing import NATS_SERVER, missing
from moeops.bus.serving_load import ensure_serving_load_bucket, put_load
from moeops.bus.serving_messages import ServerLoad
from moeops.devcluster.nats_server import NatsServer
from moeops.operator.naming import FIELD_MANAGER

PLURAL = "inferenceservices"
NAME = "scaled"
WINDOW_S = 10
IDLE_S = 10
TICK_S = 5  # the operator's default MOEOPS_AUTOSCALE_INTERVAL_S
SPEC = {"replicas": {"min": 0, "max": 4, "targetInFlight": 4, "stableWindowSeconds": WINDOW_S,
                     "scaleToZeroAfterSeconds": IDLE_S}}  # fmt: skip


async def _put(url: str, loads: list[ServerLoad]) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        kv = await ensure_serving_load_bucket(client.jetstream())
        for load in loads:
            await put_load(kv, load)
    finally:
        await client.close()


def report(url: str, namespace: str, **in_flight_queued: tuple[int, int]) -> None:
    """Each named pod's (in flight, queued), written now."""
    loads = [
        ServerLoad(namespace=namespace, service=NAME, pod=f"{NAME}-{pod}", in_flight=busy, queued=queued,
                   tokens_per_second=40.0 * busy, requests_per_second=float(busy), measured_at_unix_s=time.time())
        for pod, (busy, queued) in in_flight_queued.items()
    ]  # fmt: skip
    asyncio.run(_put(url, loads))


def replicas_become(cluster: Cluster, namespace: str, count: int, timeout: float) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        deployment = cluster.read("Deployment", namespace, NAME) or {}
        return deployment if deployment.get("spec", {}).get("replicas") == count else None

    return wait_for(f"{count} replicas", probe, timeout=timeout)


def decided(cluster: Cluster, namespace: str, count: int) -> dict[str, Any]:
    """The status once it records `count` replicas (written just after the Deployment is patched)."""
    return wait_for(
        f"status.desiredReplicas {count}",
        lambda: cluster.status_if(PLURAL, namespace, NAME, lambda s: s.get("desiredReplicas") == count),
        timeout=10,
    )


def test_replicas_follow_the_servers_load(
    cluster: Cluster, operator: OperatorProcess, bus: NatsServer | None, namespace: str
) -> None:
    if bus is None:
        missing(NATS_SERVER)
    cluster.kubectl.apply(inference_service(NAME, namespace, SPEC))
    replicas_become(cluster, namespace, 1, timeout=30)  # min 0 still starts with one server

    # 9 requests at 4 per replica: 3, at the next tick.
    report(bus.url, namespace, a=(6, 1), b=(2, 0))
    deployment = replicas_become(cluster, namespace, 3, timeout=3 * TICK_S)
    status = decided(cluster, namespace, 3)
    assert status["autoscaling"]["reason"] == "ScaleUp"
    assert status["autoscaling"]["lastScaleTime"] and "9 request(s)" in status["autoscaling"]["message"]
    managers = [f["manager"] for f in deployment["metadata"]["managedFields"]
                if "f:replicas" in f.get("fieldsV1", {}).get("f:spec", {})]  # fmt: skip
    assert managers == [FIELD_MANAGER]  # one writer of the replicas: the operator's reconcile

    # 60 requests would want 15: held at max 4.
    report(bus.url, namespace, a=(30, 10), b=(20, 0))
    replicas_become(cluster, namespace, 4, timeout=3 * TICK_S)
    assert "held at replicas.max 4" in decided(cluster, namespace, 4)["autoscaling"]["message"]

    # 5 requests want 2, but only once the 4 has been out of the stable window.
    dropped_at = time.monotonic()
    report(bus.url, namespace, a=(3, 0), b=(2, 0))
    replicas_become(cluster, namespace, 2, timeout=WINDOW_S + 3 * TICK_S)
    assert time.monotonic() - dropped_at >= WINDOW_S - TICK_S - 1  # the last 4 was decided at most a tick before
    assert decided(cluster, namespace, 2)["autoscaling"]["reason"] == "ScaleDown"

    # No load: 1 while idle for less than scaleToZeroAfterSeconds (min 0), then 0.
    report(bus.url, namespace, a=(0, 0), b=(0, 0))
    replicas_become(cluster, namespace, 0, timeout=WINDOW_S + IDLE_S + 3 * TICK_S)
    assert decided(cluster, namespace, 0)["autoscaling"]["reason"] == "ScaledToZero"
    ready = wait_for("Ready=False ScaledToZero", lambda: (c := cluster.condition(PLURAL, namespace, NAME, "Ready"))
                     and c["reason"] == "ScaledToZero" and c)  # fmt: skip
    assert ready["status"] == "False"

    # No activator: the wake annotation brings one server back.
    cluster.kubectl("annotate", "misvc", NAME, "-n", namespace, "moeops.dev/wake=1")
    replicas_become(cluster, namespace, 1, timeout=3 * TICK_S)
    status = decided(cluster, namespace, 1)
    assert status["autoscaling"]["reason"] == "Wake" and status["autoscaling"]["wake"] == "1"
