"""The energy of a local `moeops train` run, metered by the launcher process and written as a ledger snapshot.

On a cluster the node agent meters every pod and the aggregator keeps the ledger. A run on one's own machine
(`moeops train --job FILE --nproc N`, or `--config FILE --nproc N`) has neither, so the launcher meters itself:
`LocalEnergyMeter` polls, in a daemon thread while torchrun runs the workers, the energy of the GPUs the run uses
(NVML through `NvmlReader`, where NVML can start) and of the CPU packages (`rapl.CpuEnergyMeter`: RAPL where
readable, else its labelled estimate), and charges all of it to the job's train stage in a `CarbonLedger`.
`LocalRun.finish` writes `ledger.snapshot()` as `carbon.json` beside the run's config (with --job:
`.tmp/train/<job>/carbon.json`, next to `checkpoints/`) for `moeops carbon report --from-snapshot`.

What is charged: the whole machine's CPU packages (RAPL has no per-process split; the estimate uses the whole
machine's utilization), and GPUs 0..N-1 of the run's CUDA_VISIBLE_DEVICES order (the rank's `cuda:LOCAL_RANK`),
matched to NVML by index or UUID. Other GPUs are not read. A rerun (a resume) adds to the snapshot it finds.

PUE defaults to 1.0 (`WORKSTATION_PUE`): a desk-side machine has no facility (chillers, UPS, distribution) whose
overhead PUE stands for; give `--carbon-pue` (e.g. `ledger.DEFAULT_PUE`) for a server in a data centre.

The meter never fails the run: any error after the job's key is known is logged and the meter stops or carries on
without the failing part (NVML missing: CPU only).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from moeops.carbon.accounting.intensity import IntensitySource, default_static_table
from moeops.carbon.accounting.ledger import (
    J_PER_KWH,
    CarbonLedger,
    DeltaId,
    EnergyDelta,
    Stage,
    Totals,
    WorkloadKey,
    WorkloadKind,
)
from moeops.carbon.meter.nvml_reader import GpuInfo, NvmlApi, NvmlReader, NvmlUnavailable
from moeops.carbon.meter.rapl import CpuEnergyMeter

logger = logging.getLogger(__name__)
T = TypeVar("T")

WORKSTATION_PUE = 1.0
"""No facility overhead on a workstation (see the module docstring)."""
DEFAULT_REGION = "world"
"""The static table's world average: the honest default when the grid is not known."""
DEFAULT_INTERVAL_S = 1.0
SNAPSHOT_NAME = "carbon.json"
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def run_gpus(gpus: Sequence[GpuInfo], nproc: int, visible: str | None) -> tuple[GpuInfo, ...]:
    """The GPUs ranks 0..nproc-1 use: the first `nproc` entries of CUDA_VISIBLE_DEVICES (indices or UUID
    prefixes, as CUDA reads them), else the first `nproc` GPUs. Entries NVML does not know are skipped."""
    if visible is None:
        return tuple(gpus[:nproc])
    chosen = []
    for entry in (item.strip() for item in visible.split(",")[:nproc]):
        match = [g for g in gpus if (entry.isdigit() and g.index == int(entry)) or g.uuid.startswith(entry or "?")]
        chosen.extend(match[:1])
    return tuple(chosen)


@dataclass(frozen=True)
class LocalMeterSettings:
    key: WorkloadKey
    region: str
    nproc: int = 1
    interval_s: float = DEFAULT_INTERVAL_S


class LocalEnergyMeter:
    """`open()`, then `poll()` (or `start()` a thread that polls), then `close()`: each poll charges the energy
    since the previous one to `settings.key`. Clocks and NVML are injectable for tests."""

    def __init__(
        self,
        settings: LocalMeterSettings,
        ledger: CarbonLedger,
        *,
        nvml: NvmlApi | None = None,
        cpu: CpuEnergyMeter | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        visible_devices: str | None = None,
        node: str | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._reader: NvmlReader | None = NvmlReader(nvml, clock=clock)
        self._cpu = cpu or CpuEnergyMeter(clock=clock)
        self._now = now
        self._visible = visible_devices
        self._node = node or socket.gethostname() or "localhost"
        self._gpus: frozenset[str] = frozenset()
        self._gpu_j: dict[str, float] = {}
        self._source = DeltaId(source=f"{self._node}/moeops-train", epoch=time.time_ns(), sequence=0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures: Counter[str] = Counter()
        """Failed polls by part (GPU, CPU, ledger)."""

    @property
    def gpus(self) -> frozenset[str]:
        """UUIDs of the GPUs metered."""
        return self._gpus

    def open(self) -> None:
        """Start NVML (CPU only where it cannot start) and take the first readings."""
        try:
            assert self._reader is not None
            gpus = run_gpus(self._reader.open(), self.settings.nproc, self._visible)
            self._gpus = frozenset(gpu.uuid for gpu in gpus)
            logger.info("carbon: metering GPU(s) %s", ", ".join(f"{g.index} ({g.uuid})" for g in gpus) or "none")
        except NvmlUnavailable as error:
            logger.info("carbon: no GPU energy (%s); CPU only", error)
            self._reader = None
        self._read_gpus()
        self._cpu.sample()

    def _read_gpus(self) -> float:
        """GPU energy since the previous call (joules, over the metered GPUs)."""
        if self._reader is None:
            return 0.0
        self._reader.poll()
        energy_j = 0.0
        for gpu in self._reader.report():
            total = gpu.energy.energy_j
            if gpu.gpu.uuid in self._gpus and total is not None:
                energy_j += max(0.0, total - self._gpu_j.get(gpu.gpu.uuid, 0.0))
                self._gpu_j[gpu.gpu.uuid] = total
        return energy_j

    def poll(self) -> None:
        """Charge the energy since the previous poll. A failing part (GPU, CPU, ledger) is logged once, counted
        and skipped: the meter carries on, and the other part's energy is still charged."""
        gpu_j = self._guarded("GPU", self._read_gpus) or 0.0
        cpu = self._guarded("CPU", self._cpu.sample)
        if gpu_j == 0.0 and cpu is None:
            return
        self._source = self._source.model_copy(update={"sequence": self._source.sequence + 1})
        delta = EnergyDelta(
            id=self._source,
            node=self._node,
            region=self.settings.region,
            at=self._now(),
            key=self.settings.key,
            gpu_energy_j=gpu_j,
            cpu_energy_j=cpu.energy_j if cpu is not None else 0.0,
            cpu_estimated=cpu is not None and cpu.estimated,
        )
        self._guarded("ledger", lambda: self.ledger.apply(delta))

    def _guarded(self, part: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except Exception:  # the meter must never take the training run down with it
            self.failures[part] += 1
            if self.failures[part] == 1:
                logger.exception("carbon: a meter poll failed reading %s (further failures are only counted)", part)
            return None

    def start(self) -> None:
        """Poll every `interval_s` in a daemon thread until `close()`."""
        self._thread = threading.Thread(target=self._run, name="moeops-carbon-meter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            self.poll()

    def close(self) -> None:
        """Stop the thread, take the last readings, shut NVML down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * self.settings.interval_s)
        self.poll()
        if self._reader is not None:
            self._reader.close()


def load_ledger(path: Path, intensity: IntensitySource, pue: float) -> CarbonLedger:
    """The ledger of the earlier runs in `path` (a resume adds to it), or a new one."""
    if path.exists():
        try:
            ledger = CarbonLedger.restore(json.loads(path.read_text()), intensity)
        except ValueError as error:
            logger.warning("carbon: %s is not a ledger snapshot (%s); starting a new one", path, error)
        else:
            if ledger.pue == pue:
                return ledger
            logger.warning("carbon: %s has PUE %g, this run %g; starting a new snapshot", path, ledger.pue, pue)
    return CarbonLedger(intensity, pue=pue)


def summary(totals: Totals, run_j: float, key: WorkloadKey, snapshot: Path, pue: float) -> str:
    """The line printed at the end of a run: energy, gCO2e and the command that shows the report."""
    command = shlex.join(
        ["moeops", "carbon", "report", key.name, "-n", key.namespace, "--from-snapshot", str(snapshot)]
    )
    cpu = " (CPU estimated)" if totals.cpu_estimated else ""
    intensity = totals.intensity
    grid = f"{intensity.g_co2e_per_kwh:g} g/kWh ({intensity.region})" if intensity is not None else "-"
    return (
        f"carbon: this run {run_j:.1f} J; job total {totals.energy_j:.1f} J = {totals.energy_j / J_PER_KWH:.6f} kWh "
        f"(GPU {totals.gpu_energy_j:.1f} J, CPU {totals.cpu_energy_j:.1f} J{cpu}) -> {totals.gco2e:.4f} gCO2e "
        f"at {grid}, PUE {pue:g}; see: {command}"
    )


class LocalRun:
    """The meter of one local run and where its snapshot goes (`start_local_meter` builds it)."""

    def __init__(self, meter: LocalEnergyMeter, snapshot: Path) -> None:
        self.meter = meter
        self.snapshot = snapshot
        self._before_j = meter.ledger.totals(meter.settings.key).energy_j

    def finish(self) -> str | None:
        """Stop the meter, write the snapshot; the summary line, or None (logged) if it could not be written."""
        try:
            self.meter.close()
            key = self.meter.settings.key
            totals = self.meter.ledger.totals(key)
            partial = self.snapshot.with_name(self.snapshot.name + ".tmp")
            partial.write_text(json.dumps(self.meter.ledger.snapshot(), indent=2))
            partial.replace(self.snapshot)
            return summary(totals, totals.energy_j - self._before_j, key, self.snapshot, self.meter.ledger.pue)
        except Exception:
            logger.exception("carbon: the run's energy could not be recorded in %s", self.snapshot)
            return None


def start_local_meter(
    key: WorkloadKey, region: str, pue: float, nproc: int, snapshot: Path, intensity: IntensitySource | None = None
) -> LocalRun | None:
    """A started meter for a local run of `key`'s job, or None (logged) if it cannot start. Raises
    `UnknownRegionError` (before anything starts) for a region the intensity source does not know."""
    intensity = intensity or default_static_table()
    intensity.intensity_at(region, datetime.now(UTC))
    try:
        ledger = load_ledger(snapshot, intensity, pue)
        settings = LocalMeterSettings(key, region, nproc=nproc)
        meter = LocalEnergyMeter(settings, ledger, visible_devices=os.environ.get(CUDA_VISIBLE_DEVICES))
        meter.open()
        meter.start()
        return LocalRun(meter, snapshot)
    except Exception:
        logger.exception("carbon: the local energy meter could not start; the run is not metered")
        return None


def train_key(namespace: str, job_name: str) -> WorkloadKey:
    """Whom a local run's energy is charged to: the job's train stage."""
    return WorkloadKey(namespace=namespace, kind=WorkloadKind.TRAINING_JOB, name=job_name, stage=Stage.TRAIN)
