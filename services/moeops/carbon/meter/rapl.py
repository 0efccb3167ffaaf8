"""CPU package energy: measured by RAPL where the kernel lets us read it, otherwise estimated, and labelled so.

RAPL (`/sys/class/powercap/intel-rapl:<n>/energy_uj`, the `intel_rapl` powercap driver; AMD Zen exposes the same
tree) is a per-package microjoule counter that wraps at `max_energy_range_uj`. Only top-level package zones are
summed: their subzones (`intel-rapl:0:0` core, `:1` uncore) are inside the package figure, `dram` is memory, and
`psys` (client platforms) covers the whole SoC and would count the package twice.

Why an estimate at all: since CVE-2020-8694 (PLATYPUS) `energy_uj` is readable by root only, and many nodes have
no powercap tree (VMs, most clouds, this development machine). Rather than report no CPU energy, `CpuEnergyMeter`
then estimates `watts_per_cpu × logical CPUs × utilization` from `/proc/stat` and returns `estimated=True` with the
method's name, which `EnergyDelta.cpu_estimated` carries into the ledger. The default 5 W per logical CPU is a
server part's TDP over its threads (e.g. 350 W / 64 threads ≈ 5.5 W); idle power is not modelled.

Parsing is pure (`parse_proc_stat`, `counter_delta_uj`); the reads take a root path so that tests use a tmp tree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

POWERCAP_ROOT = Path("/sys/class/powercap")
PROC_STAT = Path("/proc/stat")
DEFAULT_WATTS_PER_CPU = 5.0
RAPL_METHOD = "rapl"
ESTIMATE_METHOD = "tdp_per_cpu_x_utilization"


class RaplUnavailable(RuntimeError):
    """No readable RAPL package zone: absent tree, no package zone, or permission denied (the message says)."""


@dataclass(frozen=True)
class RaplZone:
    """One package zone's counter reading."""

    zone: str
    """Directory name, e.g. `intel-rapl:0`."""
    name: str
    """The zone's `name` file, e.g. `package-0`."""
    energy_uj: int
    max_energy_range_uj: int


def counter_delta_uj(previous_uj: int, current_uj: int, max_energy_range_uj: int) -> int:
    """Energy between two readings of a counter that wraps to 0 after `max_energy_range_uj` (a 32-bit range is
    ~262 J on some parts: minutes at full load, so a slow poller sees it wrap). A reading below the previous one is
    one wrap; more than one wrap between polls cannot be told apart and is not expected at poll intervals of
    seconds."""
    if current_uj >= previous_uj:
        return current_uj - previous_uj
    return max_energy_range_uj - previous_uj + current_uj


def read_rapl_zones(root: Path = POWERCAP_ROOT) -> tuple[RaplZone, ...]:
    """The package zones under `root`, sorted by zone; raises `RaplUnavailable` saying why there are none."""
    if not root.is_dir():
        raise RaplUnavailable(f"{root} does not exist (no powercap driver: VM, container without /sys, or no RAPL)")
    zones = []
    for zone_dir in sorted(root.glob("intel-rapl:*")):
        if zone_dir.name.count(":") != 1:  # a subzone, e.g. intel-rapl:0:0, is part of its package
            continue
        try:
            name = (zone_dir / "name").read_text().strip()
            if not name.startswith("package"):
                continue
            energy_uj = int((zone_dir / "energy_uj").read_text())
            max_uj = int((zone_dir / "max_energy_range_uj").read_text())
        except PermissionError as error:
            raise RaplUnavailable(f"{zone_dir}/energy_uj is not readable (root only since CVE-2020-8694)") from error
        except (OSError, ValueError) as error:
            raise RaplUnavailable(f"{zone_dir} cannot be read: {error}") from error
        zones.append(RaplZone(zone_dir.name, name, energy_uj, max_uj))
    if not zones:
        raise RaplUnavailable(f"no RAPL package zone under {root}")
    return tuple(zones)


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate `cpu` line of /proc/stat, in clock ticks: busy and total (guests are already in user/nice)."""

    busy: int
    total: int
    cpus: int
    """Logical CPUs (the `cpuN` lines)."""


def parse_proc_stat(text: str) -> CpuTimes:
    """Busy and total ticks from /proc/stat; idle and iowait are not busy, steal is (another VM ran: not us, but
    this CPU was not idle either, and leaving it out would inflate utilization on an overcommitted host)."""
    busy = total = cpus = 0
    found = False
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
            if len(ticks) < 4:
                raise ValueError(f"/proc/stat cpu line too short: {line!r}")
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            total = sum(ticks)
            busy = total - idle
            found = True
        elif fields[0].startswith("cpu") and fields[0][3:].isdigit():
            cpus += 1
    if not found:
        raise ValueError("/proc/stat has no aggregate cpu line")
    return CpuTimes(busy, total, max(cpus, 1))


def utilization(previous: CpuTimes, current: CpuTimes) -> float:
    """Busy share of the ticks between two readings, 0–1 (0 when no tick passed)."""
    total = current.total - previous.total
    if total <= 0:
        return 0.0
    return min(max((current.busy - previous.busy) / total, 0.0), 1.0)


@dataclass(frozen=True)
class CpuEnergy:
    energy_j: float
    dt_s: float
    estimated: bool
    method: str
    """`rapl`, or the estimate's name (`tdp_per_cpu_x_utilization`)."""
    reason: str = ""
    """Why the estimate: RAPL's error message."""


@dataclass
class CpuEnergyMeter:
    """`sample()` every interval: the CPU packages' energy since the previous sample (None for the first).

    RAPL is tried at every sample, so a node whose RAPL becomes readable (or stops being so) switches on its own;
    the estimate runs alongside from /proc/stat so that it is ready for any interval RAPL misses."""

    powercap_root: Path = POWERCAP_ROOT
    proc_stat: Path = PROC_STAT
    watts_per_cpu: float = DEFAULT_WATTS_PER_CPU
    clock: Callable[[], float] = time.monotonic
    _rapl: dict[str, RaplZone] | None = field(default=None, init=False)
    _times: CpuTimes | None = field(default=None, init=False)
    _t_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.watts_per_cpu > 0:
            raise ValueError(f"watts_per_cpu must be positive, got {self.watts_per_cpu}")

    def sample(self) -> CpuEnergy | None:
        t_s = self.clock()
        times = parse_proc_stat(self.proc_stat.read_text())
        reason = ""
        try:
            zones: dict[str, RaplZone] | None = {z.zone: z for z in read_rapl_zones(self.powercap_root)}
        except RaplUnavailable as error:
            zones, reason = None, str(error)
        previous_rapl, previous_times, previous_t_s = self._rapl, self._times, self._t_s
        self._rapl, self._times, self._t_s = zones, times, t_s
        if previous_times is None or previous_t_s is None or t_s <= previous_t_s:
            return None
        dt_s = t_s - previous_t_s
        if zones is not None and previous_rapl is not None and zones.keys() == previous_rapl.keys():
            delta_uj = sum(
                counter_delta_uj(previous_rapl[key].energy_uj, zone.energy_uj, zone.max_energy_range_uj)
                for key, zone in zones.items()
            )
            return CpuEnergy(delta_uj / 1e6, dt_s, estimated=False, method=RAPL_METHOD)
        if zones is not None:
            reason = "RAPL readable from this sample on; the interval before it is estimated"
        power_w = self.watts_per_cpu * times.cpus * utilization(previous_times, times)
        return CpuEnergy(power_w * dt_s, dt_s, estimated=True, method=ESTIMATE_METHOD, reason=reason)
