"""A pod's status as the kubelet reports it, built from what the node knows (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .container import Container, Termination, now_rfc3339


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str = ""


def _terminated(term: Termination, container_id: str) -> dict[str, Any]:
    state = {
        "exitCode": term.exit_code,
        "reason": term.reason,
        "startedAt": term.started_at,
        "finishedAt": term.finished_at,
        "containerID": f"containerd://{container_id}",
    }
    if term.message:
        state["message"] = term.message
    return {"terminated": state}


def container_status(
    spec: Mapping[str, Any], container: Container | None, ready: bool, waiting: Waiting | None
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "restartCount": container.restarts if container else 0,
        "ready": ready,
        "started": bool(container and container.pid is not None),
    }
    if container and container.id:
        status["containerID"] = f"containerd://{container.id}"
    if waiting is not None:
        status["state"] = {"waiting": {"reason": waiting.reason, "message": waiting.message}}
    elif container and container.pid is not None:
        status["state"] = {"running": {"startedAt": container.started_at}}
    elif container and container.last:
        status["state"] = _terminated(container.last, container.id)
    else:
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
    previous = container.previous if container else None
    status["lastState"] = _terminated(previous[0], previous[1]) if previous else {}
    return status


def condition(kind: str, ok: bool, reason: str = "", message: str = "", since: str = "") -> dict[str, Any]:
    out = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": since or now_rfc3339()}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def pod_phase(restart_policy: str, terminations: list[Termination | None], running: int) -> str:
    """Running while any container runs or will restart; Succeeded/Failed once every container ended for good."""
    if running or not terminations or any(t is None for t in terminations):
        return "Running" if running else "Pending"
    codes = [t.exit_code for t in terminations if t is not None]
    if restart_policy == "Always" or (restart_policy == "OnFailure" and any(codes)):
        return "Running"
    return "Succeeded" if not any(codes) else "Failed"
