"""How many intra-op threads the server's torch should use: what was configured, else the container's CPU limit.

torch starts one intra-op thread per CPU it can see, and in a container it sees the node's CPUs, not its own limit:
with a 2-CPU limit on a 64-CPU node it spins 64 threads that the CFS quota throttles, and a server was ~10× slower
than with one thread per CPU it is given. The limit is cgroup v2's `cpu.max` ("QUOTA PERIOD", or "max PERIOD" for
none), rounded up to whole CPUs; never more than the CPUs this process may run on (its affinity). A configured
number wins: `--threads`, else OMP_NUM_THREADS (which the operator sets from the pod's CPU limit through the
Downward API, operator/children/pods.py: the same figure, when the pod spec gives one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
OMP_ENV = "OMP_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str
    """Where the figure came from, for the start-up log: "--threads", OMP_NUM_THREADS, cpu.max or the CPUs."""


def cpus_from_cpu_max(text: str) -> int | None:
    """Whole CPUs of a cgroup v2 `cpu.max` ("200000 100000" → 2, "150000 100000" → 2); None for no limit
    ("max 100000") or text that is not a quota."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def choose_threads(
    configured: int | None,
    environ: Mapping[str, str] = os.environ,
    cpu_max: Path = CGROUP_CPU_MAX,
    cpus: int | None = None,
    configured_by: str = "--threads",
) -> ThreadChoice:
    """The intra-op thread count to set, and why (`configured_by`: where `configured` came from)."""
    if configured is not None:
        return ThreadChoice(max(1, configured), configured_by)
    omp = environ.get(OMP_ENV, "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), OMP_ENV)
    available = cpus if cpus is not None else usable_cpus()
    try:
        limit = cpus_from_cpu_max(cpu_max.read_text())
    except OSError:  # no cgroup v2 here (a workstation, macOS): the CPUs we may run on
        limit = None
    if limit is None:
        return ThreadChoice(available, "the CPUs this process may use")
    return ThreadChoice(min(limit, available), f"{cpu_max}")
