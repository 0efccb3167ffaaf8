"""`moeops carbon report`: a table per stage and a PNG, from a ledger snapshot file (a local run, no NATS)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from moeops.carbon.accounting.intensity import StaticIntensityTable
from moeops.carbon.accounting.ledger import (
    J_PER_KWH,
    CarbonLedger,
    DeltaId,
    EnergyDelta,
    Stage,
    WorkloadKey,
    WorkloadKind,
)
from moeops.cli import main

T0 = datetime(2026, 11, 29, tzinfo=UTC)
TABLE = StaticIntensityTable.from_csv("region,g_co2e_per_kwh,year,source,alias_of\nx1,400,2025,test,\n", "test-table")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def key(stage: Stage, name: str = "mixtral") -> WorkloadKey:
    return WorkloadKey(namespace="ml", kind=WorkloadKind.TRAINING_JOB, name=name, stage=stage)


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    ledger = CarbonLedger(TABLE, pue=1.5)
    charges = [
        (key(Stage.DATA), 0.2, 0.1, False),
        (key(Stage.TRAIN), 2.0, 0.5, True),
        (key(Stage.TRAIN, "other"), 9, 0, False),
    ]
    for sequence, (workload, gpu_kwh, cpu_kwh, estimated) in enumerate(charges):
        ledger.apply(EnergyDelta(id=DeltaId(source="node-a/gpu0", epoch=1, sequence=sequence), node="node-a",
                                 region="x1", at=T0, key=workload, gpu_energy_j=gpu_kwh * J_PER_KWH,
                                 cpu_energy_j=cpu_kwh * J_PER_KWH, cpu_estimated=estimated))  # fmt: skip
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(ledger.snapshot()))
    return path


def test_table_per_stage_and_a_png(snapshot: Path, tmp_path: Path) -> None:
    png = tmp_path / "plots" / "mixtral.png"
    result = CliRunner().invoke(main, ["carbon", "report", "mixtral", "-n", "ml", "--from-snapshot", str(snapshot),
                                       "--png", str(png)])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "MoETrainingJob ml/mixtral"
    assert lines[1].split("  ")[0] == "stage" and "energy kWh" in lines[1] and lines[1].endswith("last intensity")
    cells = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(cells) == ["data", "train", "total"]  # no inference: nothing was charged to it
    # kWh × PUE 1.5 × 400 g/kWh
    assert cells["data"][1:5] == ["0.3000", "0.2000", "0.1000", "180.00"]
    assert cells["train"][1:6] == ["2.5000", "2.0000", "0.5000", "(est.)", "1500.00"]
    assert lines[3].endswith("400 g/kWh (static:test, x1)")
    assert cells["total"][1:6] == ["2.8000", "2.2000", "0.6000", "(est.)", "1680.00"]
    # Estimated share (the CPU estimate of train), PUE and the energy-weighted mean intensity.
    assert cells["data"][5:8] == ["0.0%", "1.50", "400.0"]
    assert cells["train"][6:9] == ["20.0%", "1.50", "400.0"]
    assert cells["total"][6:9] == ["17.9%", "1.50", "400.0"]

    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # two labelled bar charts, not an empty canvas
    assert f"wrote {png}" in result.stderr


def test_a_workload_without_totals_and_a_bad_file_are_errors(snapshot: Path, tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["carbon", "report", "nope", "-n", "ml", "--from-snapshot", str(snapshot)])
    assert missing.exit_code == 1 and "no carbon totals for MoETrainingJob ml/nope" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"workloads": 3}')
    broken = CliRunner().invoke(main, ["carbon", "report", "x", "--from-snapshot", str(bad)])
    assert broken.exit_code == 1 and "not a ledger snapshot" in broken.stderr


def test_mean_intensity_is_energy_weighted_and_estimates_show_in_table_json_and_png(tmp_path: Path) -> None:
    """1 kWh at 400 g and 3 kWh at 100 g: the mean is 175 g/kWh, where the last intensity says 100; 0.5 kWh of the
    GPU energy was estimated (power standing in for a counter)."""
    grid = StaticIntensityTable.from_csv(
        "region,g_co2e_per_kwh,year,source,alias_of\nx1,400,2025,test,\nx2,100,2025,test,\n", "test-table"
    )
    ledger = CarbonLedger(grid, pue=1.2)
    for sequence, (region, kwh, estimated_kwh) in enumerate([("x1", 1.0, 0.5), ("x2", 3.0, 0.0)]):
        ledger.apply(EnergyDelta(id=DeltaId(source="node-a/energy", epoch=1, sequence=sequence), node="node-a",
                                 region=region, at=T0, key=key(Stage.TRAIN), gpu_energy_j=kwh * J_PER_KWH,
                                 cpu_energy_j=0.0, gpu_estimated_j=estimated_kwh * J_PER_KWH))  # fmt: skip
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(ledger.snapshot()))
    args = ["carbon", "report", "mixtral", "-n", "ml", "--from-snapshot", str(path)]
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, shown.output
    train = next(line.split() for line in shown.stdout.splitlines() if line.startswith("train"))
    assert train[4:8] == [f"{1.2 * 700:.2f}", "12.5%", "1.20", "175.0"]  # 1.2 × (1 × 400 + 3 × 100) g
    assert train[-4:] == ["100", "g/kWh", "(static:test,", "x2)"]  # the newest intensity, no longer the only one

    as_json = CliRunner().invoke(main, [*args, "--json"])
    document = json.loads(as_json.stdout)
    row = document["stages"][0]
    assert row["stage"] == "train" and row["mean_intensity"] == pytest.approx(175.0) and row["pue"] == 1.2
    assert row["estimated_kwh"] == pytest.approx(0.5) and row["estimated_share"] == pytest.approx(0.125)
    assert document["total"]["gco2e"] == pytest.approx(1.2 * 700.0)

    png = tmp_path / "mixtral.png"
    assert CliRunner().invoke(main, [*args, "--png", str(png)]).exit_code == 0
    assert png.read_bytes().startswith(PNG_MAGIC)
