"""The carbon entry points: CPU only or a clear exit without NVML, settings errors, and the NVML source's deltas."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from fakes.fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, FakeNvml, Trace
from moeops.api import env
from moeops.carbon import cli
from moeops.carbon.accounting.ledger import EnergyDelta
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.node.cpu_source import CpuNodeSource


def no_nvml() -> NvmlReader:
    return NvmlReader(FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND))


@pytest.mark.parametrize("setting", [{cli.CARBON_GPUS: "required"}, {cli.CARBON_NVML_ONLY: "true"}])
def test_without_nvml_the_agent_exits_with_a_message_where_gpus_are_required(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: dict[str, str]
) -> None:
    monkeypatch.setattr(cli, "NvmlReader", no_nvml)
    environ = {env.NODE_NAME: "node-a", cli.CARBON_REGION: "de", cli.CARBON_SPOOL_DIR: str(tmp_path), **setting}
    with pytest.raises(SystemExit) as exited:
        cli.main(["agent"], environ)
    assert exited.value.code == cli.EX_UNAVAILABLE
    assert "NVML is not available" in capsys.readouterr().err


def test_without_nvml_the_agent_goes_on_with_the_cpu_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "NvmlReader", no_nvml)
    with caplog.at_level(logging.INFO, logger=cli.__name__):
        assert cli.open_nvml({}) is None
        source = cli.cpu_only_source({cli.CARBON_CGROUP_ROOT: str(tmp_path)}, "node-a", "de")
    assert isinstance(source, CpuNodeSource) and source.settings.cgroup_root == tmp_path
    assert "NO GPU energy is measured" in caplog.text and "CPU only (no GPU)" in caplog.text


def test_gpus_none_never_tries_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> NvmlReader:
        raise AssertionError("NVML tried")

    monkeypatch.setattr(cli, "NvmlReader", refuse)
    assert cli.open_nvml({cli.CARBON_GPUS: "none"}) is None


def test_an_unknown_gpu_mode_is_a_settings_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["agent"], {env.NODE_NAME: "node-a", cli.CARBON_REGION: "de", cli.CARBON_GPUS: "maybe"})
    assert exited.value.code == cli.EX_CONFIG
    assert cli.CARBON_GPUS in capsys.readouterr().err


def test_the_cgroup_root_is_the_setting_else_the_cgroup2_mount(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cli.cgroup_root({cli.CARBON_CGROUP_ROOT: "/x/unified"}, mountinfo) == Path("/x/unified")
    assert cli.cgroup_root({}, mountinfo) == Path("/sys/fs/cgroup/unified")
    assert cli.cgroup_root({}, tmp_path / "absent") == cli.FALLBACK_CGROUP_ROOT


def test_a_missing_node_name_is_a_settings_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["agent"], {cli.CARBON_REGION: "de"})
    assert exited.value.code == cli.EX_CONFIG
    assert env.NODE_NAME in capsys.readouterr().err


def test_the_nvml_source_gives_each_gpus_energy_since_the_last_call() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a", Trace.steady(300.0)), FakeGpu("GPU-b", Trace.steady(100.0))])
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()
    source = cli.nvml_idle_source(reader, "node-a", "de")
    deltas: list[EnergyDelta] = []
    for _ in range(5):
        deltas += source()
        nvml.clock.advance(2.0)
    assert {d.id.source for d in deltas} == {"node-a/GPU-a", "node-a/GPU-b"}
    assert all(d.key is None and d.node == "node-a" for d in deltas)
    assert math.isclose(math.fsum(d.energy_j for d in deltas), 400.0 * 8.0, rel_tol=1e-6)
