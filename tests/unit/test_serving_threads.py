"""The model server's torch intra-op threads (serving/threads.py): what was configured, else the container's CPU
limit read from cgroup v2's cpu.max, never more than the CPUs the process may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from moeops.serving.threads import choose_threads, cpus_from_cpu_max


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None), ("", None),
     ("garbage", None), ("0 100000", None), ("100000 0", None)],
)  # fmt: skip
def test_cpus_from_cpu_max(text: str, cpus: int | None) -> None:
    assert cpus_from_cpu_max(text) == cpus


def test_the_cgroup_limit_when_nothing_is_configured(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("300000 100000\n")
    choice = choose_threads(None, environ={}, cpu_max=cpu_max, cpus=64)
    assert (choice.threads, choice.source) == (3, str(cpu_max))
    assert choose_threads(None, environ={}, cpu_max=cpu_max, cpus=2).threads == 2  # never above the affinity


def test_configured_wins_then_omp_then_the_cpus(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert choose_threads(4, environ={"OMP_NUM_THREADS": "2"}, cpu_max=cpu_max, cpus=8).threads == 4
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "2"}, cpu_max=cpu_max, cpus=8).source == "OMP_NUM_THREADS"
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "x"}, cpu_max=cpu_max, cpus=8).threads == 8
    missing = choose_threads(None, environ={}, cpu_max=tmp_path / "absent", cpus=5)
    assert missing.threads == 5 and "CPUs" in missing.source
