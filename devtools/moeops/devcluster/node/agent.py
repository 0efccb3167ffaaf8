"""The process node: a Node in the cluster whose pods run as processes on this machine.

One loop (`sync`, twice a second) does what the scheduler, the kubelet's pod manager and kube-proxy do for one
node: binds the pods that fit (nodeSelector, resource requests against the node's allocatable), starts a
`PodWorker` for each pod bound here, hands deletions to them, and rewrites the hosts file and the Service proxy's
routes from the pods and Services it sees. Pods of another scheduler (`schedulerName`) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from .cgroups import CgroupTree
from .images import ImageCatalog
from .kubelet_api import KubeletApi
from .network import AddressPool, PodName, ServiceName, hosts_file, local_service_address, write_in_place
from .node_context import NodeContext
from .pod_worker import PodWorker
from .podspec import pod_hostname
from .proxy import ServiceProxy
from .quantity import parse_quantity

log = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "default-scheduler"
REPO_IMAGES = Path(__file__).resolve().parents[4] / "images"


@dataclass(frozen=True)
class NodeShape:
    cpu: int = 16
    memory: str = ""
    gpus: int = 0
    pods: int = 110

    def capacity(self) -> dict[str, str]:
        memory = self.memory or f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**20}Mi"
        out = {"cpu": str(self.cpu), "memory": memory, "pods": str(self.pods), "ephemeral-storage": "100Gi"}
        if self.gpus:
            out["nvidia.com/gpu"] = str(self.gpus)
        return out


def requests_of(pod: Mapping[str, Any]) -> dict[str, Fraction]:
    total: dict[str, Fraction] = {}
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}  # limits default requests
        for name, amount in asked.items():
            total[name] = total.get(name, Fraction(0)) + parse_quantity(str(amount))
    return total


def unschedulable_reason(pod: Mapping[str, Any], labels: Mapping[str, str], free: Mapping[str, Fraction]) -> str:
    """Why this pod does not fit the node now, or '' when it does (the scheduler's filter plugins, in short)."""
    selector = pod["spec"].get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    short = [name for name, amount in requests_of(pod).items() if amount > free.get(name, Fraction(0))]
    if short:
        return f"0/1 nodes are available: 1 Insufficient {', '.join(sorted(short))}."
    return ""


class ProcessNode:
    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        state_dir: Path,
        name: str = "process-node-0",
        shape: NodeShape | None = None,
        images_dir: Path = REPO_IMAGES,
    ) -> None:
        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.name = name
        self.shape = shape or NodeShape()
        self.state_dir = state_dir
        self.labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "moeops.dev/process-node": "true"}
        self.addresses = AddressPool()
        self.proxy = ServiceProxy()
        self.workers: dict[str, PodWorker] = {}
        self._ended: set[str] = set()  # pods whose worker finished: a pod that ended never runs again
        self._unschedulable: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        state_dir.mkdir(parents=True, exist_ok=True)
        hosts = state_dir / "hosts"
        write_in_place(hosts, hosts_file([], []))
        hosts.chmod(0o644)
        self.context = NodeContext(
            api_client,
            name,
            state_dir,
            CgroupTree.for_node(name),
            ImageCatalog(images_dir),
            hosts,
            on_release=self.addresses.release,
        )

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.context.cgroups.clean()
        self.api = KubeletApi(self.state_dir, self.name, self.find_log)
        self.api.start()
        self.register()
        self._thread = threading.Thread(target=self._loop, name=f"node {self.name}", daemon=True)
        self._thread.start()

    def stop(self, grace_cap_s: float = 10.0) -> None:
        """Ends every pod's processes (at most `grace_cap_s` each, in parallel) and the node's threads."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for worker in list(self.workers.values()):
            worker.pod = {
                **worker.pod,
                "metadata": {
                    **worker.pod["metadata"],
                    "deletionTimestamp": "stop",
                    "deletionGracePeriodSeconds": min(worker._grace(), grace_cap_s),
                },
            }
        for worker in list(self.workers.values()):
            worker.done.wait(timeout=grace_cap_s + 10)
        self.proxy.close()
        self.api.stop()
        self.context.cgroups.clean()
        self.context.cgroups.remove()

    def find_log(self, namespace: str, pod: str, container: str, previous: bool) -> tuple[Path, Any] | None:
        """The log file `kubectl logs` asks for, and a callable telling whether its container still runs."""
        for worker in list(self.workers.values()):
            meta = worker.pod["metadata"]
            if (meta["namespace"], meta["name"]) != (namespace, pod):
                continue
            for slot in worker.slots:
                if slot.spec["name"] == container and slot.container is not None:
                    run = slot.container
                    number = run.restarts - 1 if previous else run.restarts
                    path = run.log_dir / f"{number}.log"
                    return (path, lambda run=run: run.pid is not None) if number >= 0 and path.exists() else None
        folders = sorted(self.state_dir.glob(f"pods/{namespace}_{pod}_*/logs/{container}"),
                         key=lambda p: p.stat().st_mtime)  # fmt: skip
        if not folders:
            return None
        runs = sorted(folders[-1].glob("*.log"), key=lambda p: int(p.stem))
        wanted = runs[-2:-1] if previous else runs[-1:]
        return (wanted[0], lambda: False) if wanted else None

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.sync()
            except (ApiException, OSError, ValueError) as error:
                log.warning("node sync failed (retrying): %s", error)

    def register(self) -> None:
        capacity = self.shape.capacity()
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.api.port}},
                # No Hostname address: the API server would look it up in DNS to reach /containerLogs.
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "moeops process node is posting ready status",
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.34.0-moeops-process-node",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "moeops-process://0.1",
                    "kernelVersion": os.uname().release,
                    "osImage": "this machine",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kubeProxyVersion": "",
                },
            },
        }
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_node_status(self.name, {"status": body["status"]}, _preload_content=False)

    # --- one pass -------------------------------------------------------------------------------------------

    def _list(self, call: Any) -> list[dict[str, Any]]:
        return list(json.loads(call(_preload_content=False).data)["items"])

    def sync(self) -> None:
        pods = self._list(self.core.list_pod_for_all_namespaces)
        services = self._list(self.core.list_service_for_all_namespaces)
        mine = {p["metadata"]["uid"]: p for p in pods if p["spec"].get("nodeName") == self.name}
        self._schedule([p for p in pods if self._wants_us(p)], mine.values())
        for uid, pod in mine.items():
            worker = self.workers.get(uid)
            if worker is not None:
                worker.update(pod)
            elif pod["metadata"].get("deletionTimestamp"):  # ended before (or before this node started): no process
                self.context.delete_pod(pod)
            elif uid not in self._ended and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                worker = self.workers[uid] = PodWorker(self.context, pod, self.addresses.take(uid))
                worker.start()
        for uid, worker in list(self.workers.items()):
            if uid not in mine and not worker.deleting:  # force-deleted: its processes go at once
                worker.update(
                    {
                        **worker.pod,
                        "metadata": {
                            **worker.pod["metadata"],
                            "deletionTimestamp": "gone",
                            "deletionGracePeriodSeconds": 0,
                        },
                    }
                )
            if worker.done.is_set():
                del self.workers[uid]
                self._ended.add(uid)
        self._ended &= set(mine)
        self._network(services)

    def _wants_us(self, pod: Mapping[str, Any]) -> bool:
        spec, meta = pod["spec"], pod["metadata"]
        return (
            not spec.get("nodeName")
            and spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
            and not meta.get("deletionTimestamp")
            and not spec.get("schedulingGates")
        )

    def _schedule(self, pending: list[dict[str, Any]], bound: Any) -> None:
        capacity = {k: parse_quantity(v) for k, v in self.shape.capacity().items()}
        for pod in bound:
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                for name, amount in requests_of(pod).items():
                    capacity[name] = capacity.get(name, Fraction(0)) - amount
                capacity["pods"] -= 1
        for pod in sorted(pending, key=lambda p: p["metadata"]["creationTimestamp"]):
            reason = unschedulable_reason(pod, self.labels, capacity)
            if reason:
                self._mark_unschedulable(pod, reason)
                continue
            self._bind(pod)
            for name, amount in requests_of(pod).items():
                capacity[name] -= amount
            capacity["pods"] -= 1

    def _bind(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            self.core.create_namespaced_binding(meta["namespace"], body, _preload_content=False)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def _mark_unschedulable(self, pod: Mapping[str, Any], reason: str) -> None:
        uid = pod["metadata"]["uid"]
        if self._unschedulable.get(uid) == reason:
            return
        self._unschedulable[uid] = reason
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": reason}
        self.context.patch_status(pod, {"conditions": [condition]})
        self.context.event(pod, "Warning", "FailedScheduling", reason)

    def _network(self, services: list[dict[str, Any]]) -> None:
        workers = list(self.workers.values())
        pod_names = [
            PodName(w.address, w.pod["metadata"]["namespace"], pod_hostname(w.pod), w.pod["spec"].get("subdomain", ""))
            for w in workers
            if not w.done.is_set()
        ]
        service_names, routes = [], {}
        for service in services:
            meta, spec = service["metadata"], service["spec"]
            address = local_service_address(spec.get("clusterIP", ""))
            if address is None or spec.get("type") == "ExternalName":
                continue
            service_names.append(ServiceName(address, meta["namespace"], meta["name"]))
            selector = spec.get("selector") or {}
            if not selector:  # endpoints managed by hand (the API server's own `kubernetes` Service): not ours
                continue
            backends = [
                w
                for w in workers
                if selector
                and w.pod["metadata"]["namespace"] == meta["namespace"]
                and all((w.pod["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
                and w.ready()
            ]
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port["port"])
                endpoints = [
                    (w.address, w.ports().get(str(target), 0) or int(target if str(target).isdigit() else 0))
                    for w in backends
                ]
                routes[(address, int(port["port"]))] = [e for e in endpoints if e[1]]
        write_in_place(self.context.hosts_path, hosts_file(pod_names, service_names))
        self.proxy.update(routes)
