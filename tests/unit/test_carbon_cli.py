"""The carbon entry points: a clear exit without NVML, settings errors, and the NVML source's deltas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fakes.fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, FakeNvml, Trace
from moeops.api import env
from moeops.carbon import cli
from moeops.carbon.nvml_reader import NvmlReader


def test_without_nvml_the_agent_exits_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "NvmlReader", lambda: NvmlReader(FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)))
    environ = {env.NODE_NAME: "node-a", cli.CARBON_REGION: "de", cli.CARBON_SPOOL_DIR: str(tmp_path)}
    with pytest.raises(SystemExit) as exited:
        cli.main(["agent"], environ)
    assert exited.value.code == cli.EX_UNAVAILABLE
    assert "NVML is not available" in capsys.readouterr().err


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
    deltas = []
    for _ in range(5):
        deltas += source()
        nvml.clock.advance(2.0)
    assert {d.id.source for d in deltas} == {"node-a/GPU-a", "node-a/GPU-b"}
    assert all(d.key is None and d.node == "node-a" for d in deltas)
    assert math.isclose(math.fsum(d.energy_j for d in deltas), 400.0 * 8.0, rel_tol=1e-6)
