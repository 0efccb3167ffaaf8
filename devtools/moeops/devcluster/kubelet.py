"""Stand-in for the kubelet of a node-less dev cluster: binds pods to a fake Node and moves them through
phases as a test (or the demo) asks. The Job, Deployment and garbage-collection controllers then react
exactly as they would to a real kubelet's status updates."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

MERGE = "application/merge-patch+json"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    def __init__(self, api_client: kubernetes.client.ApiClient, node: str = "fake-node-0") -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.node = node
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def ensure_node(self, gpus: int = 8) -> None:
        """A Ready node with CPU, memory and GPUs (node status may be set on create)."""
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "500", "nvidia.com/gpu": str(gpus)}
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [{"type": "Ready", "status": "True", "reason": "FakeKubeletReady", "message": ""}],
            },
        }
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        return list(json.loads(response.data)["items"])

    def bind(self, pod: dict[str, Any]) -> None:
        """What the scheduler does: a Binding to our node."""
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        try:
            self.core.create_namespaced_binding(meta["namespace"], body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:  # 409: already bound (the caller held an older copy of the pod)
                raise

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], {"status": status}, _content_type=MERGE, _preload_content=False
        )

    def _container_names(self, pod: dict[str, Any]) -> list[str]:
        return [c["name"] for c in pod["spec"]["containers"]]

    def run(self, pod: dict[str, Any], ready: bool = True) -> None:
        """Bind if needed, then Running (and Ready) like a started container."""
        if not pod["spec"].get("nodeName"):
            self.bind(pod)
        now = _now()
        flag = "True" if ready else "False"
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                    {"type": "Ready", "status": flag, "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": name,
                        "ready": ready,
                        "started": True,
                        "restartCount": 0,
                        "image": "fake",
                        "imageID": "",
                        "state": {"running": {"startedAt": now}},
                    }
                    for name in self._container_names(pod)
                ],
            },
        )

    def finish(self, pod: dict[str, Any], exit_code: int = 0) -> None:
        """Terminate every container with `exit_code`: Succeeded for 0, else Failed."""
        if not pod["spec"].get("nodeName"):
            self.bind(pod)
        now = _now()
        reason = "Completed" if exit_code == 0 else "Error"
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": name,
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "image": "fake",
                        "imageID": "",
                        "state": {
                            "terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}
                        },
                    }
                    for name in self._container_names(pod)
                ],
            },
        )

    def reap(self) -> int:
        """Finish deleting terminating pods, as a kubelet does once containers stop. Returns how many."""
        response = self.core.list_pod_for_all_namespaces(_preload_content=False)
        reaped = 0
        for pod in json.loads(response.data)["items"]:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and pod["spec"].get("nodeName") == self.node:
                try:
                    self.core.delete_namespaced_pod(
                        meta["name"], meta["namespace"], grace_period_seconds=0, _preload_content=False
                    )
                    reaped += 1
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        return reaped

    def start_reaper(self, interval: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reap()
                except (ApiException, OSError):
                    continue  # the API server may be going away at teardown.

        self._reaper = threading.Thread(target=loop, name="fake-kubelet-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reaper:
            self._reaper.join(timeout=5)
