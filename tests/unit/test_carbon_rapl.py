"""CPU package energy (moeops.carbon.meter.rapl): RAPL counters in a tmp powercap tree, wrap-around, and the labelled
estimate from /proc/stat where RAPL is absent or root-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moeops.carbon.meter.rapl import (
    ESTIMATE_METHOD,
    RAPL_METHOD,
    CpuEnergyMeter,
    CpuTimes,
    RaplUnavailable,
    counter_delta_uj,
    parse_proc_stat,
    read_rapl_zones,
    utilization,
)

MAX_UJ = 262_143_328_850

PROC_STAT = """\
cpu  {user} 0 {system} {idle} 100 0 50 0 0 0
cpu0 1 0 1 1 0 0 0 0 0 0
cpu1 1 0 1 1 0 0 0 0 0 0
cpu2 1 0 1 1 0 0 0 0 0 0
cpu3 1 0 1 1 0 0 0 0 0 0
intr 123 0 0
ctxt 456
"""


def write_zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int = MAX_UJ) -> None:
    directory = root / zone
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "name").write_text(f"{name}\n")
    (directory / "energy_uj").write_text(f"{energy_uj}\n")
    (directory / "max_energy_range_uj").write_text(f"{max_uj}\n")


def write_stat(path: Path, user: int, system: int, idle: int) -> None:
    path.write_text(PROC_STAT.format(user=user, system=system, idle=idle))


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_counter_delta_handles_the_wrap() -> None:
    assert counter_delta_uj(1_000, 5_000, MAX_UJ) == 4_000
    assert counter_delta_uj(MAX_UJ - 1_000, 2_000, MAX_UJ) == 3_000


def test_only_package_zones_are_read(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    write_zone(tmp_path, "intel-rapl:0:0", "core", 5)
    write_zone(tmp_path, "intel-rapl:0:2", "dram", 5)
    write_zone(tmp_path, "intel-rapl:1", "package-1", 20)
    write_zone(tmp_path, "intel-rapl:2", "psys", 99)
    zones = read_rapl_zones(tmp_path)
    assert [(z.zone, z.name, z.energy_uj) for z in zones] == [("intel-rapl:0", "package-0", 10),
                                                              ("intel-rapl:1", "package-1", 20)]  # fmt: skip


def test_absent_tree_and_no_package_are_explained(tmp_path: Path) -> None:
    with pytest.raises(RaplUnavailable, match="does not exist"):
        read_rapl_zones(tmp_path / "missing")
    write_zone(tmp_path, "intel-rapl:0", "psys", 1)
    with pytest.raises(RaplUnavailable, match="no RAPL package zone"):
        read_rapl_zones(tmp_path)


def test_root_only_counter_is_reported_as_a_permission_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Mode 0400 as the kernel sets it; injected rather than chmod-ed, since tests may run as root.
    write_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    real_read_text = Path.read_text

    def read_text(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(RaplUnavailable, match="CVE-2020-8694"):
        read_rapl_zones(tmp_path)


def test_proc_stat_busy_total_and_cpus() -> None:
    times = parse_proc_stat(PROC_STAT.format(user=300, system=100, idle=500))
    # busy = user + system + softirq (300 + 100 + 50); idle + iowait = 600; guest columns are not added again.
    assert times == CpuTimes(busy=450, total=1050, cpus=4)
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        parse_proc_stat("intr 1\n")


def test_utilization_between_readings() -> None:
    assert utilization(CpuTimes(100, 1000, 4), CpuTimes(400, 1400, 4)) == 0.75
    assert utilization(CpuTimes(100, 1000, 4), CpuTimes(100, 1000, 4)) == 0.0


def test_meter_measures_with_rapl_across_a_wrap(tmp_path: Path) -> None:
    powercap, stat, clock = tmp_path / "powercap", tmp_path / "stat", Clock()
    write_zone(powercap, "intel-rapl:0", "package-0", MAX_UJ - 50_000_000)
    write_zone(powercap, "intel-rapl:1", "package-1", 1_000_000)
    write_stat(stat, 0, 0, 0)
    meter = CpuEnergyMeter(powercap, stat, clock=clock)
    assert meter.sample() is None
    clock.now_s = 1.0
    write_zone(powercap, "intel-rapl:0", "package-0", 70_000_000)  # wrapped: 50 J + 70 J
    write_zone(powercap, "intel-rapl:1", "package-1", 81_000_000)  # 80 J
    write_stat(stat, 100, 0, 100)
    energy = meter.sample()
    assert energy is not None
    assert (energy.energy_j, energy.dt_s, energy.estimated, energy.method) == (200.0, 1.0, False, RAPL_METHOD)


def test_meter_estimates_without_rapl_and_says_so(tmp_path: Path) -> None:
    stat, clock = tmp_path / "stat", Clock()
    write_stat(stat, 0, 0, 0)
    meter = CpuEnergyMeter(tmp_path / "no-powercap", stat, watts_per_cpu=10.0, clock=clock)
    assert meter.sample() is None
    clock.now_s = 2.0
    write_stat(stat, 200, 100, 1000)  # +300 busy ticks (user, system) of +1300 (and +1000 idle)
    energy = meter.sample()
    assert energy is not None
    assert energy.estimated
    assert energy.method == ESTIMATE_METHOD
    assert "does not exist" in energy.reason
    assert energy.energy_j == pytest.approx(10.0 * 4 * (300 / 1300) * 2.0)


def test_meter_estimates_the_interval_before_rapl_became_readable(tmp_path: Path) -> None:
    powercap, stat, clock = tmp_path / "powercap", tmp_path / "stat", Clock()
    write_stat(stat, 0, 0, 0)
    meter = CpuEnergyMeter(powercap, stat, clock=clock)
    meter.sample()
    clock.now_s = 1.0
    write_zone(powercap, "intel-rapl:0", "package-0", 5_000_000)
    write_stat(stat, 10, 0, 10)
    first = meter.sample()
    assert first is not None and first.estimated
    clock.now_s = 2.0
    write_zone(powercap, "intel-rapl:0", "package-0", 9_000_000)
    second = meter.sample()
    assert second is not None and not second.estimated and second.energy_j == 4.0


def test_this_machine_gives_some_cpu_energy() -> None:
    # Real /proc/stat and /sys/class/powercap: RAPL where readable (root on bare metal), else the labelled estimate.
    clock = Clock()
    meter = CpuEnergyMeter(clock=clock)
    meter.sample()
    clock.now_s = 0.5
    energy = meter.sample()
    assert energy is not None
    assert energy.energy_j >= 0
    assert energy.estimated == (energy.method == ESTIMATE_METHOD)
