"""The journeys' training jobs (the example job, shorter) and what they look at on the process node."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path
from typing import Any

import yaml
from harness import Cluster, wait_for

from moeops.devcluster.platform import LocalPlatform

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / name).read_text()))


def short_job(name: str, steps: int, interval: int, **training: Any) -> dict[str, Any]:
    """The example job, renamed, with fewer steps and its own checkpoint folder on the example's claim."""
    job = copy.deepcopy(example("moe-debug-trainingjob.yaml"))
    job["metadata"]["name"] = name
    spec = job["spec"]
    # A small batch: these journeys are about faults and status, not accuracy, and must stay short on 2 cores.
    warmup = min(spec["training"].get("warmupSteps", 0), steps // 4)
    spec["training"].update(steps=steps, globalBatchSize=16, warmupSteps=warmup, **training)
    spec["checkpoint"] = {"intervalSteps": interval, "storage": {"claimName": "moe-checkpoints", "path": f"/{name}"}}
    return job


def apply_with_claim(cluster: Cluster, namespace: str, job: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "moe-checkpoints-pvc.yaml"))
    cluster.kubectl.apply(job, "-n", namespace)


def job_status(platform: LocalPlatform, cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    platform.check()
    return cluster.status("moetrainingjobs", namespace, name)


def wait_step(
    platform: LocalPlatform, cluster: Cluster, ns: str, name: str, step: int, timeout: float = 600
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = job_status(platform, cluster, ns, name)
        assert status.get("state") != "Failed", status
        return status if (status.get("progress") or {}).get("step", 0) >= step else None

    return wait_for(f"{name} to reach step {step}", reached, timeout=timeout, interval=1)


def wait_done(platform: LocalPlatform, cluster: Cluster, ns: str, name: str, timeout: float = 900) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = job_status(platform, cluster, ns, name)
        return status if status.get("state") in ("Succeeded", "Failed") else None

    return wait_for(f"{name} to finish", done, timeout=timeout, interval=2)


def worker_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    response = cluster.core.list_namespaced_pod(namespace, label_selector=f"moeops.dev/training-job={name}",
                                                _preload_content=False)  # fmt: skip
    return list(json.loads(response.data)["items"])


def pod_pids(pod_uid: str) -> list[int]:
    """The processes of a pod on the process node, from its cgroups (v2 where mounted, else cpuacct)."""
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob(f"**/pod{pod_uid}/*/cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def kill_training_rank(pod: dict[str, Any]) -> int:
    """SIGKILL one training rank (a `moeops.trainer.worker` process) of this pod; returns its pid."""
    for pid in pod_pids(pod["metadata"]["uid"]):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"moeops.trainer.worker" in command:
            os.kill(pid, signal.SIGKILL)
            return pid
    raise AssertionError(f"no training rank in pod {pod['metadata']['name']}: {pod_pids(pod['metadata']['uid'])}")


def checkpoint_steps(platform: LocalPlatform, namespace: str, name: str) -> list[int]:
    folder = platform.node_state / "pvc" / namespace / "moe-checkpoints" / name
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*") if p.name.split("-")[1].isdigit())
