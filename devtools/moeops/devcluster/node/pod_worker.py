"""One pod on the process node, from admission to deletion, in a thread of its own (the kubelet's pod worker).

Admission (images, configuration, volumes: each failure leaves the pod waiting with the kubelet's reason and
is retried), then every container started, watched and restarted per `restartPolicy` with CrashLoopBackOff's
doubling delay, probes run, emptyDir `sizeLimit` enforced by eviction, and the status patched whenever it changes.
Deletion: SIGTERM, the pod's grace period, SIGKILL to whatever is left, then the pod object is removed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import podstatus, volumes
from .container import Container, Termination, now_rfc3339
from .images import ImagePullError
from .node_context import NodeContext
from .podspec import SpecError, container_plan, pod_hostname
from .probes import ProbeState, new_states, run_once
from .quantity import parse_quantity

log = logging.getLogger(__name__)

TICK_S = 0.2
BACKOFF_S, MAX_BACKOFF_S = 10.0, 300.0
SIZE_CHECK_S = 5.0


@dataclass
class _Slot:
    spec: dict[str, Any]
    container: Container | None = None
    waiting: podstatus.Waiting | None = None
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    restart_at: float = 0.0


class PodWorker:
    def __init__(self, node: NodeContext, pod: dict[str, Any], address: str) -> None:
        self.node = node
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.address = address
        self.dir = node.state_dir / "pods" / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}_{self.uid}"
        self.slots = [_Slot(c) for c in pod["spec"]["containers"]]
        self.sources: dict[str, str] = {}
        self.phase = "Pending"
        self.evicted: str = ""
        self.done = threading.Event()
        self._sent: dict[str, Any] = {}
        self._started = now_rfc3339()
        self._thread = threading.Thread(target=self._run, name=f"pod {pod['metadata']['name']}", daemon=True)

    @property
    def name(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod  # the agent's latest copy: deletionTimestamp arrives this way

    @property
    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def ready(self) -> bool:
        return self.phase == "Running" and all(self._slot_ready(s) for s in self.slots)

    def _slot_ready(self, slot: _Slot) -> bool:
        running = slot.container is not None and slot.container.pid is not None
        return running and (slot.readiness is None or slot.readiness.healthy)

    def ports(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for slot in self.slots:
            for port in slot.spec.get("ports") or []:
                found[str(port["containerPort"])] = int(port["containerPort"])
                if port.get("name"):
                    found[port["name"]] = int(port["containerPort"])
        return found

    # --- the loop -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.deleting and not self._admit():
                self._report()
                self._sleep(2.0)
            while not self.deleting and self.phase not in ("Succeeded", "Failed"):
                self._step()
                self._report()
                self._sleep(TICK_S)
            self._stop_all(self._grace())
            self._report()
            if self.deleting:
                self.node.delete_pod(self.pod)
        except Exception:  # a bug here must not take the node down, nor leave processes behind
            log.exception("pod worker %s failed", self.name)
            self._stop_all(0)
        finally:
            self.node.release(self.uid)
            self.done.set()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.deleting:
            time.sleep(min(TICK_S, seconds))

    def _admit(self) -> bool:
        """Images, configuration and volumes; True once every container has started."""
        images = []
        for slot in self.slots:
            try:
                images.append(self.node.images.resolve(slot.spec["image"]))
            except ImagePullError as error:
                reason = (
                    "ErrImagePull"
                    if slot.waiting is None or slot.waiting.reason != "ErrImagePull"
                    else "ImagePullBackOff"
                )
                slot.waiting = podstatus.Waiting(reason, str(error))
                self.node.event(self.pod, "Warning", "Failed", f"Failed to pull image {slot.spec['image']!r}: {error}")
                return False
        try:
            self.sources = volumes.prepare(self.pod, self.dir, self.node.state_dir, self.node.volume_readers)
        except (SpecError, OSError) as error:
            for slot in self.slots:
                slot.waiting = podstatus.Waiting("ContainerCreating", str(error))
            self.node.event(self.pod, "Warning", "FailedMount", str(error))
            return False
        pod = {**self.pod, "status": {"podIP": self.address, "hostIP": "127.0.0.1"}}
        for slot, image in zip(self.slots, images, strict=True):
            try:
                plan = container_plan(pod, slot.spec, image, self.node.lookups)
            except SpecError as error:
                slot.waiting = podstatus.Waiting("CreateContainerConfigError", str(error))
                self.node.event(self.pod, "Warning", "Failed", f"Error: {error}")
                return False
            slot.container = Container(
                plan,
                image,
                slot.spec.get("resources") or {},
                pod_hostname(self.pod),
                self.dir / "logs" / slot.spec["name"],
                slot.spec.get("terminationMessagePath") or "/dev/termination-log",
                slot.spec.get("terminationMessagePolicy") or "File",
            )
        for slot in self.slots:
            self._start(slot)
        self.phase = "Running"
        return True

    def _binds(self, slot: _Slot) -> list[dict[str, Any]]:
        assert slot.container is not None
        binds = []
        if slot.container.image.venv:
            binds.append({"source": str(self.node.venv), "target": slot.container.image.venv, "readOnly": True})
        for mount in slot.container.plan.mounts:
            source = (
                Path(self.sources[mount.volume]) / mount.sub_path
                if mount.sub_path
                else Path(self.sources[mount.volume])
            )
            binds.append({"source": str(source), "target": mount.target, "readOnly": mount.read_only})
        for path in self.node.host_paths():  # after the volumes: a volume at /tmp must not hide them
            binds.append({"source": str(path), "target": str(path), "readOnly": True})
        binds.append({"source": str(self.node.hosts_path), "target": "/etc/hosts", "readOnly": True})
        return binds

    def _start(self, slot: _Slot) -> None:
        assert slot.container is not None
        slot.waiting = None
        staging = self.dir / "rootfs" / slot.spec["name"]
        slot.container.start(self.uid, self.node.cgroups, self._binds(slot), staging)
        slot.readiness, slot.liveness = new_states(slot.spec)
        self.node.event(self.pod, "Normal", "Started", f"Started container {slot.spec['name']}")

    def _step(self) -> None:
        now = time.monotonic()
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for slot in self.slots:
            container = slot.container
            assert container is not None
            ended = container.poll()
            if ended is not None:
                self._ended(slot, ended, policy, now)
            if container.pid is None and slot.restart_at and now >= slot.restart_at:
                slot.restart_at = 0.0
                self._start(slot)
            self._probe(slot, now)
        self._check_sizes(now)
        running = sum(1 for s in self.slots if s.container and s.container.pid is not None)
        pending_restart = any(s.restart_at for s in self.slots)
        terms = [s.container.last if s.container else None for s in self.slots]
        self.phase = "Running" if pending_restart else podstatus.pod_phase(policy, terms, running)
        if self.evicted:
            self.phase = "Failed"

    def _ended(self, slot: _Slot, ended: Termination, policy: str, now: float) -> None:
        assert slot.container is not None
        log.info("%s/%s exited %s (%s)", self.name, slot.spec["name"], ended.exit_code, ended.reason)
        if policy == "Always" or (policy == "OnFailure" and ended.exit_code != 0):
            delay = min(BACKOFF_S * 2 ** min(slot.container.restarts, 8), MAX_BACKOFF_S)
            slot.restart_at = now + (0.0 if slot.container.restarts == 0 and ended.exit_code == 0 else delay)
            slot.waiting = podstatus.Waiting("CrashLoopBackOff", f"back-off {delay:.0f}s restarting failed container")
            self.node.event(self.pod, "Warning", "BackOff", f"Back-off restarting container {slot.spec['name']}")

    def _probe(self, slot: _Slot, now: float) -> None:
        container = slot.container
        if container is None or container.pid is None:
            return
        for state, kind in ((slot.readiness, "Readiness"), (slot.liveness, "Liveness")):
            if state is None or not state.due(now):
                continue
            ok = run_once(state.probe, self.address, self.ports(), container.pid)
            if state.record(ok, now) and not ok:
                self.node.event(self.pod, "Warning", "Unhealthy", f"{kind} probe failed")
                if kind == "Liveness":
                    self.node.event(
                        self.pod, "Normal", "Killing", f"Container {slot.spec['name']} failed liveness probe"
                    )
                    container.stop(self._grace())

    def _check_sizes(self, now: float) -> None:
        if now < getattr(self, "_next_size_check", 0.0):
            return
        self._next_size_check = now + SIZE_CHECK_S
        for name, limit in volumes.empty_dir_limits(self.pod).items():
            used = volumes.usage_bytes(Path(self.sources[name]))
            if used > parse_quantity(limit):
                self.evicted = f'Usage of EmptyDir volume "{name}" exceeds the limit "{limit}". '
                self.node.event(self.pod, "Warning", "Evicted", self.evicted)
                self._stop_all(self._grace())

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        return float(meta.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30)))

    def _stop_all(self, grace_s: float) -> None:
        running = [s.container for s in self.slots if s.container is not None and s.container.pid is not None]
        if running:
            self.node.event(self.pod, "Normal", "Killing", "Stopping container(s)")
        for container in running:
            container.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for container in running:
            container.stop(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            slot.restart_at = 0.0

    # --- status ---------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        ready = self.ready()
        statuses = [podstatus.container_status(s.spec, s.container, self._slot_ready(s), s.waiting) for s in self.slots]
        started = any(s.container is not None for s in self.slots)
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.address,
            "podIPs": [{"ip": self.address}],
            "startTime": self._started,
            "containerStatuses": statuses,
        }
        ended = self.phase in ("Succeeded", "Failed")
        reason = "PodCompleted" if ended else ""
        status["conditions"] = [
            self._condition("PodScheduled", True),
            self._condition("PodReadyToStartContainers", started),
            self._condition("Initialized", True),
            self._condition("ContainersReady", ready, reason),
            self._condition("Ready", ready, reason),
        ]
        if self.evicted:
            status.update(reason="Evicted", message=self.evicted)
            status["conditions"].append(self._condition("DisruptionTarget", True, "TerminationByKubelet", self.evicted))
        return status

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        for old in self._sent.get("conditions", []):
            if old["type"] == kind and (old["status"] == "True") == ok:
                return {**old, **({"reason": reason} if reason else {}), **({"message": message} if message else {})}
        return podstatus.condition(kind, ok, reason, message)

    def _report(self) -> None:
        status = self.status()
        if status != self._sent:
            try:
                self.node.patch_status(self.pod, status)
                self._sent = status
            except Exception as error:  # the next tick tries again; a refused status must be visible in the log
                log.warning("status of %s not written: %s", self.name, str(error)[:500])
