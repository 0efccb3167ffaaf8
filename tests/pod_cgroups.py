"""Real cgroup v2 directories shaped like a kubelet's pods, for tests that measure real CPU time.

`pod_cgroups()` makes `<cgroup2 mount>/moeops-test-<hex>/kubepods/`, under which `container(uid, id)` creates
`pod<uid>/<64 hex id>`: the layout of the dev cluster's process node (`moeops-<node>/kubepods/...`, the cgroupfs
driver's names one level down), which the carbon agent must find. `run_in` moves a started process into one. On
exit every process it started is killed and every directory removed, bottom-up. It needs root and a writable
cgroup2 mount: elsewhere the test is skipped (not failed under CI=true, unlike `missing`: a CI container may be
given no writable cgroup tree, and that is a set-up we accept).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moeops.carbon.meter.pod_cpu import find_cgroup2_root

BUSY_LOOP = (sys.executable, "-c", "while True: pass")


@dataclass
class PodCgroups:
    root: Path
    """The cgroup2 mount (what the agent finds in /proc/self/mountinfo)."""
    top: Path
    """`<root>/moeops-test-<hex>`: this test's pods only, under `kubepods/`."""
    _dirs: list[Path] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def container(self, pod_uid: str, container_id: str) -> Path:
        directory = self.top / "kubepods" / f"pod{pod_uid}" / container_id
        for level in (directory.parent.parent, directory.parent, directory):
            if not level.exists():
                level.mkdir()
                self._dirs.append(level)
        return directory

    def run_in(self, directory: Path, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Starts `argv` and moves it into the cgroup `directory` (its first moments are counted where it started)."""
        proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._procs.append(proc)
        (directory / "cgroup.procs").write_text(str(proc.pid))
        return proc

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
        for directory in reversed(self._dirs):
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()
        with contextlib.suppress(FileNotFoundError):
            self.top.rmdir()


@contextlib.contextmanager
def pod_cgroups() -> Iterator[PodCgroups]:
    root = find_cgroup2_root()
    if os.geteuid() != 0 or root is None or not (root / "cgroup.procs").exists():
        pytest.skip("real pod cgroups need root and a cgroup v2 mount")
    top = root / f"moeops-test-{uuid.uuid4().hex[:8]}"
    try:
        top.mkdir()
    except OSError as error:
        pytest.skip(f"the cgroup v2 tree {root} is not writable here: {error}")
    cgroups = PodCgroups(root, top)
    try:
        yield cgroups
    finally:
        cgroups.close()
