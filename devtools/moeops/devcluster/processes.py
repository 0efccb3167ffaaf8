"""The processes of the local platform: started in a session of their own, logging to a file, ended with their parent.

Every component runs in a session of its own (a Ctrl-C meant for the test runner must not hit the cluster under
it mid-teardown), so nothing else would end them if the process that started them is killed before its teardown
runs: a killed test run would leave an API server, a node and its training pods behind. Linux's parent-death
signal closes that gap: SIGTERM to the child when its parent goes, whatever way it goes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A `preexec_fn`: runs in the child between fork and exec."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class PlatformError(RuntimeError):
    """A component failed to start (its log is named in the message)."""


def wait_until(
    what: str, probe: Callable[[], object], timeout_s: float, check: Callable[[], None] = lambda: None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check()
        if probe():
            return
        time.sleep(0.25)
    raise PlatformError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Component:
    """One process of the platform, logging to `<work_dir>/<name>.log`."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise PlatformError(f"{self.name} exited with {self.proc.returncode}; {self.log_path}:\n{tail}")

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
