"""The energy meter of a local `moeops train` run (moeops.carbon.meter.local_meter) on a FAKE NVML and a tmp RAPL tree:
the snapshot's train stage holds the traces' energy, `moeops carbon report --from-snapshot` shows it, and the meter
never raises into the run."""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fakes.fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeClock, FakeGpu, FakeNvml, Trace
from moeops.carbon.accounting.intensity import UnknownRegionError, default_static_table
from moeops.carbon.accounting.ledger import CarbonLedger, LedgerSnapshot
from moeops.carbon.meter.local_meter import (
    WORKSTATION_PUE,
    LocalEnergyMeter,
    LocalMeterSettings,
    LocalRun,
    load_ledger,
    run_gpus,
    start_local_meter,
    train_key,
)
from moeops.carbon.meter.nvml_reader import GpuInfo
from moeops.carbon.meter.rapl import CpuEnergyMeter
from moeops.cli import main

TOLERANCE = 0.005
KEY = train_key("local", "moe-debug")
CPU_W = 40.0
STAT = "cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\ncpu2 0 0 0 0\ncpu3 0 0 0 0\n"


class Machine:
    """A fake NVML and a tmp /proc/stat (plus a RAPL package zone when `rapl`), all on one fake clock."""

    def __init__(self, tmp: Path, gpus: list[FakeGpu], *, rapl: bool = True, nvml_init_error: int | None = None):
        self.clock = FakeClock()
        self.nvml = FakeNvml(gpus, clock=self.clock, init_error=nvml_init_error)
        self.powercap = tmp / "powercap"
        self.stat = tmp / "stat"
        self.rapl = rapl
        self.ticks = 0
        self.write()

    def write(self) -> None:
        """The counters at the clock's time: RAPL at CPU_W, and 100 ticks a second per CPU, half of them busy."""
        self.ticks = round(self.clock() * 400)
        self.stat.write_text(STAT.format(busy=self.ticks // 2, idle=self.ticks - self.ticks // 2))
        if self.rapl:
            zone = self.powercap / "intel-rapl:0"
            zone.mkdir(parents=True, exist_ok=True)
            (zone / "name").write_text("package-0\n")
            (zone / "energy_uj").write_text(f"{round(5e9 + CPU_W * self.clock() * 1e6)}\n")
            (zone / "max_energy_range_uj").write_text("262143328850\n")

    def meter(self, nproc: int, region: str = "world") -> LocalEnergyMeter:
        cpu = CpuEnergyMeter(powercap_root=self.powercap, proc_stat=self.stat, clock=self.clock)
        ledger = CarbonLedger(default_static_table(), pue=WORKSTATION_PUE)
        settings = LocalMeterSettings(KEY, region, nproc=nproc)
        return LocalEnergyMeter(settings, ledger, nvml=self.nvml, cpu=cpu, clock=self.clock, node="workstation")

    def run(self, meter: LocalEnergyMeter, seconds: int) -> None:
        meter.open()
        for _ in range(seconds):
            self.clock.advance(1.0)
            self.write()
            meter.poll()


def test_the_train_stage_holds_the_traces_energy_and_the_report_shows_it(tmp_path: Path) -> None:
    traces = [Trace.ramp(100.0, 400.0, 30.0), Trace.sine(250.0, 80.0, 17.0), Trace.steady(999.0)]
    machine = Machine(tmp_path, [FakeGpu(f"GPU-{i}", trace) for i, trace in enumerate(traces)])
    meter = machine.meter(nproc=2)  # ranks 0 and 1: GPU 2 belongs to someone else
    machine.run(meter, 60)
    snapshot = tmp_path / "carbon.json"
    line = LocalRun(meter, snapshot).finish()

    gpu_j = sum(trace.energy_j(60.0) - trace.energy_j(0.0) for trace in traces[:2])
    restored = LedgerSnapshot.model_validate(json.loads(snapshot.read_text()))
    [entry] = restored.workloads
    assert entry.key == KEY
    assert entry.totals.gpu_energy_j == pytest.approx(gpu_j, rel=TOLERANCE)
    assert entry.totals.cpu_energy_j == pytest.approx(CPU_W * 60, rel=TOLERANCE)
    assert entry.totals.energy_j == pytest.approx(gpu_j + CPU_W * 60, rel=TOLERANCE)
    assert not entry.totals.cpu_estimated  # RAPL was readable
    assert entry.totals.gco2e == pytest.approx(entry.totals.energy_j / 3.6e6 * 481, rel=1e-9)  # world, PUE 1
    assert restored.pue == 1.0 and meter.gpus == {"GPU-0", "GPU-1"}

    assert line is not None and f"{entry.totals.gco2e:.4f} gCO2e" in line
    command = line.split("see: ")[1]
    assert command == f"moeops carbon report moe-debug -n local --from-snapshot {snapshot}"
    result = CliRunner().invoke(main, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert result.output.splitlines()[0] == "MoETrainingJob local/moe-debug"
    assert float(rows["train"][1]) == pytest.approx(entry.totals.energy_j / 3.6e6, abs=1e-4)
    assert rows["train"][4] == f"{entry.totals.gco2e:.2f}"


def test_without_nvml_or_rapl_the_cpu_estimate_is_charged_and_labelled(tmp_path: Path) -> None:
    machine = Machine(tmp_path, [], rapl=False, nvml_init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    meter = machine.meter(nproc=2)
    machine.run(meter, 10)
    meter.close()
    totals = meter.ledger.totals(KEY)
    assert totals.gpu_energy_j == 0.0 and totals.cpu_estimated
    assert totals.cpu_energy_j == pytest.approx(5.0 * 4 * 0.5 * 10)  # 5 W per CPU x 4 CPUs x 50 % busy


def test_a_failing_poll_is_logged_and_the_meter_carries_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    machine = Machine(tmp_path, [FakeGpu("GPU-0", Trace.steady(200.0))])
    meter = machine.meter(nproc=1)
    meter.open()
    machine.stat.unlink()
    machine.clock.advance(1.0)
    with caplog.at_level(logging.ERROR):
        meter.poll()
        meter.poll()
    assert len([r for r in caplog.records if "meter poll failed" in r.message]) == 1
    machine.write()
    machine.clock.advance(1.0)
    machine.write()
    meter.poll()
    assert meter.ledger.totals(KEY).gpu_energy_j == pytest.approx(400.0, rel=TOLERANCE)


def test_the_background_thread_polls_until_closed(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu("GPU-0", Trace.steady(300.0))], clock=time.monotonic)  # type: ignore[arg-type]
    ledger = CarbonLedger(default_static_table(), pue=1.0)
    meter = LocalEnergyMeter(LocalMeterSettings(KEY, "world", interval_s=0.01), ledger, nvml=nvml)
    meter.open()
    meter.start()
    time.sleep(0.2)
    meter.close()
    assert ledger.totals(KEY).gpu_energy_j > 0 and ledger.totals(KEY).cpu_energy_j >= 0


def test_the_run_gpus_follow_cuda_visible_devices() -> None:
    gpus = [GpuInfo(i, f"GPU-{i}aaaa", "H100", None) for i in range(4)]
    assert [g.index for g in run_gpus(gpus, 2, None)] == [0, 1]
    assert [g.index for g in run_gpus(gpus, 2, "3,1,0")] == [3, 1]
    assert [g.index for g in run_gpus(gpus, 2, "GPU-2,7")] == [2]  # a UUID prefix; 7 is not there
    assert run_gpus(gpus, 1, "") == ()  # no visible GPU: CUDA sees none


def test_a_rerun_adds_to_the_snapshot_it_finds_unless_the_pue_changed(tmp_path: Path) -> None:
    machine = Machine(tmp_path, [FakeGpu("GPU-0", Trace.steady(100.0))])
    first = machine.meter(nproc=1)
    machine.run(first, 5)
    snapshot = tmp_path / "carbon.json"
    assert LocalRun(first, snapshot).finish() is not None
    before = first.ledger.totals(KEY).energy_j
    assert load_ledger(snapshot, default_static_table(), 1.0).totals(KEY).energy_j == before
    assert load_ledger(snapshot, default_static_table(), 1.2).totals(KEY).energy_j == 0.0
    snapshot.write_text("{not json")
    assert load_ledger(snapshot, default_static_table(), 1.0).workloads() == {}


def test_an_unknown_region_is_refused_before_the_meter_starts(tmp_path: Path) -> None:
    with pytest.raises(UnknownRegionError, match="atlantis"):
        start_local_meter(KEY, "atlantis", 1.0, 1, tmp_path / "carbon.json")
    assert not (tmp_path / "carbon.json").exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_job_with_carbon_off_is_not_metered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool) -> None:
    from moeops import cli
    from moeops.carbon.meter import local_meter
    from moeops.local import local_config

    resolved = local_config(Path(__file__).parents[2] / "examples" / "moe-debug-trainingjob.yaml", 1, tmp_path / "ckpt")
    carbon = resolved.carbon.model_copy(update={"enabled": enabled})
    config = tmp_path / "config.json"
    config.write_text(resolved.model_copy(update={"carbon": carbon}).model_dump_json(by_alias=True))
    started: list[tuple[object, ...]] = []
    monkeypatch.setattr(local_meter, "start_local_meter", lambda *args: started.append(args))
    cli._carbon_meter(config, 1, None, None)
    assert [args[0] for args in started] == ([train_key("local", "moe-debug")] if enabled else [])
