"""One container of the process node: its processes started through the sandbox, watched, stopped, logged."""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .cgroups import CgroupTree, ContainerCgroup
from .images import ImageConfig
from .podspec import ContainerPlan
from .quantity import parse_quantity

SANDBOX = Path(__file__).with_name("sandbox.py")
START_ERROR = 128
MESSAGE_BYTES = 4096
"""The most of a termination message a kubelet keeps per container."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def closed_ancestors(*paths: str) -> list[str]:
    """Folders on the way to these paths that others may not enter (e.g. /root, 0700, above a pyenv Python):
    the sandbox opens them in the container's own layer so that a non-root container can run the interpreter."""
    found: list[str] = []
    for path in paths:
        current = Path(os.path.realpath(path))
        for folder in [*reversed(current.parents), current]:
            if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH and str(folder) not in found:
                found.append(str(folder))
    return found


@dataclass
class Termination:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    message: str = ""


@dataclass
class Container:
    plan: ContainerPlan
    image: ImageConfig
    resources: dict[str, Any]
    hostname: str
    log_dir: Path
    termination_path: str = "/dev/termination-log"
    """The container's terminationMessagePath: a file of its own, bound there, whose text becomes the message."""
    termination_policy: str = "File"
    restarts: int = 0
    id: str = ""
    started_at: str = ""
    last: Termination | None = None
    previous: tuple[Termination, str] | None = None  # the run before the last restart (lastState), and its id
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _cgroup: ContainerCgroup | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.restarts}.log"

    def start(self, pod_uid: str, cgroups: CgroupTree, binds: list[dict[str, Any]], staging: Path) -> None:
        if self.last is not None:  # a restart: the run that ended becomes lastState
            self.previous = (self.last, self.id)
            self.restarts += 1
            self.last = None
        self.id = secrets.token_hex(32)
        self._cgroup = cgroups.container(pod_uid, self.id)
        limits = self.resources.get("limits") or {}
        memory = int(parse_quantity(str(limits["memory"]))) if "memory" in limits else None
        cpus = parse_quantity(str(limits["cpu"])) if "cpu" in limits else None
        self._cgroup.limit(memory, cpus)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # As a kubelet does: an empty file per run, writable by the container's user, bound at its path.
        message_file = self._termination_file()
        message_file.write_bytes(b"")
        os.chown(message_file, self.plan.uid, self.plan.gid)
        binds = [*binds, {"source": str(message_file), "target": self.termination_path, "readOnly": False}]
        spec = {
            "cgroups": self._cgroup.join_paths(),
            "hostname": self.hostname,
            "staging": str(staging),
            "binds": binds,
            "traverse": closed_ancestors(sys.executable, sys.prefix),
            "users": [list(u) for u in self.image.users],
            "workdir": self.plan.working_dir,
            "readOnlyRoot": self.plan.read_only_root,
            "uid": self.plan.uid,
            "gid": self.plan.gid,
            "groups": self.plan.groups,
            "argv": self.plan.argv,
            "env": self.plan.env,
            "nodePid": os.getpid(),
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.log_dir / f"{self.restarts}.spec.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)  # env may hold a Secret's value
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SANDBOX), str(spec_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = now_rfc3339()

    def poll(self) -> Termination | None:
        """The termination once the entry point has exited (its leftover processes are killed then), else None."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return self._finish(self._proc.returncode)

    def _finish(self, returncode: int) -> Termination:
        assert self._cgroup is not None
        self._cgroup.kill()
        code = 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128 + N, as runtimes say
        oom = self._cgroup.oom_killed()
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        message = ""
        if code == START_ERROR and self._start_failed():
            reason, message = "StartError", self._last_log_line()
        else:
            message = self._termination_message(code)
        self._cgroup.remove()
        if self._log:
            self._log.close()
        self._proc = None
        self.last = Termination(code, reason, self.started_at, now_rfc3339(), message)
        return self.last

    def _termination_file(self) -> Path:
        return self.log_dir / f"{self.restarts}.termination-log"

    def _termination_message(self, code: int) -> str:
        """The file's text (at most 4 KiB, the kubelet's limit); with FallbackToLogsOnError and an empty file after
        a failure, the log's last 80 lines."""
        try:
            text = self._termination_file().read_bytes()[:MESSAGE_BYTES].decode(errors="replace")
        except OSError:
            text = ""
        if not text and code != 0 and self.termination_policy == "FallbackToLogsOnError":
            lines = self.log_path.read_text(errors="replace").splitlines()[-80:]
            text = "\n".join(lines)[-MESSAGE_BYTES:]
        return text

    def _last_log_line(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def _start_failed(self) -> bool:
        return self._last_log_line().startswith("process node: cannot start container")

    def signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signum)

    def stop(self, grace_s: float) -> Termination | None:
        """SIGTERM, up to `grace_s` for the entry point to exit, then SIGKILL to every process it left."""
        if self._proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=max(grace_s, 0))
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self._proc.wait()
        return self._finish(self._proc.returncode)
