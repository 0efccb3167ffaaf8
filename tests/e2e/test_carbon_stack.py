"""The carbon stack as the local platform starts it (`moeops.devcluster.carbon_stack`): the aggregator and a node's
agent as host processes, on the real control plane and a real nats-server. A pod bound to the node, whose process
burns CPU in a real cgroup laid out as the process node lays it out, has its MoETrainingJob's energy in the
`moeops-carbon` bucket (what the operator copies into `.status.carbon`): the agent found the node's pods through
the API server with the kubeconfig, their cgroups below the cgroup v2 mount, and no GPU."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
from harness import Cluster, wait_for

from missing import NATS_SERVER, missing
from moeops.carbon.accounting.ledger import WorkloadKind
from moeops.carbon.accounting.messages import WorkloadCarbon
from moeops.carbon.accounting.store import ensure_carbon_bucket, workload_carbon
from moeops.devcluster.carbon_stack import start_carbon
from moeops.devcluster.nats_server import NatsServer
from moeops.operator.naming import training_labels
from pod_cgroups import BUSY_LOOP, pod_cgroups

CID = "e" * 64
JOB = "moe-debug"


async def _totals(url: str, namespace: str) -> WorkloadCarbon | None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        kv = await ensure_carbon_bucket(client.jetstream())
        return await workload_carbon(kv, namespace, WorkloadKind.TRAINING_JOB, JOB)
    finally:
        await client.close()


def charged(url: str, namespace: str) -> WorkloadCarbon | None:
    totals = asyncio.run(_totals(url, namespace))
    return totals if totals is not None and totals.energy_j > 1.0 else None


def test_the_carbon_stack_charges_a_busy_pod_to_its_job(
    cluster: Cluster, bus: NatsServer | None, tmp_path: Path
) -> None:
    if bus is None:
        missing(NATS_SERVER)
    suffix = uuid.uuid4().hex[:8]
    namespace, node = f"carbon-{suffix}", f"carbon-node-{suffix}"
    with pod_cgroups() as cgroups:
        cluster.core.create_namespace({"metadata": {"name": namespace}})
        cluster.core.create_node({"metadata": {"name": node}})  # else pod GC deletes a pod bound to no node
        try:
            pod = cluster.core.create_namespaced_pod(namespace, {
                "metadata": {"name": f"{JOB}-0", "labels": training_labels(JOB)},
                "spec": {"nodeName": node, "containers": [{"name": "worker", "image": "moeops-runtime"}]},
            })  # fmt: skip
            cgroups.run_in(cgroups.container(pod.metadata.uid, CID), BUSY_LOOP)
            with start_carbon(cluster.kubeconfig, bus.url, node, tmp_path, cgroup_root=cgroups.root) as stack:
                totals = wait_for(f"{JOB}'s energy in the bucket", lambda: charged(bus.url, namespace), timeout=60)
                stack.check()
        finally:
            cluster.core.delete_namespace(namespace, _preload_content=False)
            cluster.core.delete_node(node)
    assert totals.gco2e > 0
    agent_log = (tmp_path / "carbon-agent.log").read_text()
    assert "CPU energy is ESTIMATED" in agent_log or "measured by RAPL" in agent_log  # it says what it measures
    assert "pods failed" not in agent_log  # the pod list through the kubeconfig worked
