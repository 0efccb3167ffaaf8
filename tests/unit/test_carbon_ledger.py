"""The carbon ledger: exact arithmetic, intensity per delta time, idempotent replay, idle apart, snapshots."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from moeops.carbon.accounting.intensity import (
    Intensity,
    IntensitySeries,
    IntensityUnavailableError,
    StaticIntensityTable,
)
from moeops.carbon.accounting.ledger import (
    J_PER_KWH,
    CarbonLedger,
    DeltaId,
    EnergyDelta,
    Stage,
    WorkloadKey,
    WorkloadKind,
    carbon_g,
)

T0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
TRAIN = WorkloadKey(namespace="ml", kind=WorkloadKind.TRAINING_JOB, name="mixtral", stage=Stage.TRAIN)
SERVE = WorkloadKey(namespace="ml", kind=WorkloadKind.INFERENCE_SERVICE, name="mixtral", stage=Stage.INFERENCE)
TABLE = StaticIntensityTable.from_csv(
    "region,g_co2e_per_kwh,year,source,alias_of\nx1,400,2025,test,\nx2,100,2025,test,\n", "test-table"
)


def delta(
    sequence: int,
    *,
    key: WorkloadKey | None = TRAIN,
    gpu_j: float = J_PER_KWH,
    cpu_j: float = 0.0,
    at: datetime = T0,
    source: str = "node-a/gpu0",
    epoch: int = 1,
    region: str = "x1",
    cpu_estimated: bool = False,
) -> EnergyDelta:
    return EnergyDelta(
        id=DeltaId(source=source, epoch=epoch, sequence=sequence),
        node=source.split("/")[0],
        region=region,
        at=at,
        key=key,
        gpu_energy_j=gpu_j,
        cpu_energy_j=cpu_j,
        cpu_estimated=cpu_estimated,
    )


def test_one_kwh_at_pue_1_5_and_400_g_per_kwh_is_600_g() -> None:
    ledger = CarbonLedger(TABLE, pue=1.5)
    charge = ledger.apply(delta(0, gpu_j=3.0e6, cpu_j=0.6e6))
    assert charge is not None
    assert (charge.energy_j, charge.gco2e, charge.pue) == (3.6e6, 600.0, 1.5)
    totals = ledger.totals(TRAIN)
    assert (totals.energy_j, totals.gpu_energy_j, totals.cpu_energy_j, totals.gco2e) == (3.6e6, 3.0e6, 0.6e6, 600.0)
    assert totals.gco2e_by_source == {"static:test": 600.0}
    assert totals.intensity is not None and totals.intensity.g_co2e_per_kwh == 400.0
    assert totals.intensity.region == "x1" and totals.intensity.valid_from == datetime(2025, 1, 1, tzinfo=UTC)
    assert totals.last_update == T0 and totals.cpu_estimated is False


def test_carbon_formula_units() -> None:
    intensity = Intensity(g_co2e_per_kwh=250.0, source="s", region="r", valid_from=T0)
    assert carbon_g(7.2e6, 1.0, intensity) == 500.0  # 2 kWh × 250 g
    assert carbon_g(0.0, 1.56, intensity) == 0.0


def test_each_delta_uses_the_intensity_valid_at_its_own_time() -> None:
    series = IntensitySeries.from_csv(
        "timestamp,region,g_co2e_per_kwh\n2026-11-29T00:00:00Z,x1,400\n2026-11-29T01:00:00Z,x1,100\n",
        "day.csv",
        hold=timedelta(hours=2),
    )
    ledger = CarbonLedger(series, pue=1.0)
    first = ledger.apply(delta(0, at=T0 + timedelta(minutes=30)))
    second = ledger.apply(delta(1, at=T0 + timedelta(minutes=90)))
    assert first is not None and second is not None
    assert (first.gco2e, second.gco2e) == (400.0, 100.0)
    assert first.intensity.valid_from == T0 and second.intensity.valid_from == T0 + timedelta(hours=1)
    totals = ledger.totals(TRAIN)
    assert totals.gco2e == 500.0  # not 2 kWh × either value
    assert totals.intensity == second.intensity
    assert totals.last_update == T0 + timedelta(minutes=90)


def test_replaying_deltas_is_a_no_op() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    stream = [delta(n, at=T0 + timedelta(seconds=n)) for n in range(5)]
    for item in stream:
        assert ledger.apply(item) is not None
    before = ledger.snapshot()
    for item in stream:  # the whole stream again, as after an aggregator restart
        assert ledger.apply(item) is None
    assert ledger.apply(delta(2, gpu_j=9e9)) is None  # an older sequence, whatever it carries
    assert ledger.snapshot() == before
    assert ledger.totals(TRAIN).gco2e == 5 * 400.0


def test_a_restarted_meter_starts_a_new_epoch_and_is_counted() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(7, epoch=1))
    assert ledger.apply(delta(0, epoch=2)) is not None  # sequence restarts at 0 in the new run
    assert ledger.apply(delta(0, epoch=1)) is None
    assert ledger.totals(TRAIN).energy_j == 2 * J_PER_KWH


def test_sources_are_deduplicated_independently() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    assert ledger.apply(delta(0, source="node-a/gpu0")) is not None
    assert ledger.apply(delta(0, source="node-a/gpu1")) is not None
    assert ledger.totals(TRAIN).energy_j == 2 * J_PER_KWH


def test_idle_energy_is_kept_per_node_and_never_charged_to_a_workload() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(0, key=None, source="node-a/gpu0"))
    ledger.apply(delta(1, key=TRAIN, source="node-a/gpu0"))
    ledger.apply(delta(0, key=None, source="node-b/gpu0", region="x2"))
    assert ledger.totals(TRAIN).energy_j == J_PER_KWH
    assert ledger.idle("node-a").gco2e == 400.0 and ledger.idle("node-b").gco2e == 100.0
    assert set(ledger.workloads()) == {TRAIN}
    assert set(ledger.idle_nodes()) == {"node-a", "node-b"}
    assert ledger.idle("node-c").energy_j == 0.0


def test_stages_and_kinds_are_separate_keys() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    data_stage = TRAIN.model_copy(update={"stage": Stage.DATA})
    ledger.apply(delta(0, key=TRAIN))
    ledger.apply(delta(1, key=data_stage, gpu_j=J_PER_KWH / 2))
    ledger.apply(delta(2, key=SERVE, gpu_j=J_PER_KWH / 4))
    assert [ledger.totals(key).gco2e for key in (TRAIN, data_stage, SERVE)] == [400.0, 200.0, 100.0]


def test_cpu_estimate_flag_is_sticky() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(0, cpu_j=10.0))
    assert ledger.totals(TRAIN).cpu_estimated is False
    ledger.apply(delta(1, cpu_j=10.0, cpu_estimated=True))
    ledger.apply(delta(2, cpu_j=10.0))
    assert ledger.totals(TRAIN).cpu_estimated is True


class StaleAfterFirst:
    """An intensity source whose second answer is a stale copy of the first (as the provider cache serves it)."""

    def __init__(self) -> None:
        self.calls = 0

    def intensity_at(self, region: str, when: datetime) -> Intensity:
        self.calls += 1
        return Intensity(g_co2e_per_kwh=200.0, source="live", region=region, valid_from=T0, stale=self.calls > 1)


def test_grams_are_broken_down_by_source_and_staleness() -> None:
    ledger = CarbonLedger(StaleAfterFirst(), pue=1.0)
    ledger.apply(delta(0))
    ledger.apply(delta(1))
    totals = ledger.totals(TRAIN)
    assert totals.gco2e_by_source == {"live": 200.0, "live (stale)": 200.0}
    assert totals.intensity is not None and totals.intensity.stale


def test_snapshot_round_trips_through_json() -> None:
    ledger = CarbonLedger(TABLE, pue=1.2)
    ledger.apply(delta(0, cpu_j=1.5e5, cpu_estimated=True))
    ledger.apply(delta(1, key=SERVE, at=T0 + timedelta(seconds=10)))
    ledger.apply(delta(0, key=None, source="node-b/gpu3", region="x2"))
    saved = json.loads(json.dumps(ledger.snapshot()))
    restored = CarbonLedger.restore(saved, TABLE)
    assert restored.snapshot() == ledger.snapshot()
    assert restored.pue == 1.2
    assert restored.totals(TRAIN) == ledger.totals(TRAIN)
    assert restored.idle("node-b") == ledger.idle("node-b")
    assert restored.apply(delta(1, key=SERVE)) is None  # the marks survived: a replay after recovery is a no-op
    assert restored.apply(delta(2, key=SERVE)) is not None
    assert restored.totals(SERVE).energy_j == 2 * J_PER_KWH


@pytest.mark.parametrize(
    "bad",
    [
        {"gpu_energy_j": -1.0},
        {"cpu_energy_j": -0.001},
        {"gpu_energy_j": math.nan},
        {"cpu_energy_j": math.inf},
        {"key": {"namespace": "ml", "kind": "MoETrainingJob", "name": "x", "stage": "finetune"}},
        {"key": {"namespace": "ml", "kind": "Deployment", "name": "x", "stage": "train"}},
        {"at": datetime(2026, 11, 29)},  # naive
        {"id": {"source": "n/g", "epoch": 0, "sequence": -1}},
    ],
    ids=["negative-gpu", "negative-cpu", "nan", "inf", "unknown-stage", "unknown-kind", "naive-time", "negative-seq"],
)
def test_bad_deltas_are_rejected_and_totals_stay_unchanged(bad: dict[str, Any]) -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(0))
    before = ledger.snapshot()
    fields = delta(1).model_dump() | bad
    with pytest.raises(ValueError) as error:  # the contract: a ValueError (pydantic's ValidationError is one)
        ledger.apply(EnergyDelta.model_validate(fields))
    assert isinstance(error.value, ValidationError)
    assert ledger.snapshot() == before


def test_unknown_stage_error_names_the_valid_stages() -> None:
    with pytest.raises(ValidationError, match="'data', 'train' or 'inference'"):
        WorkloadKey.model_validate({"namespace": "ml", "kind": "other", "name": "x", "stage": "eval"})


def test_a_failed_intensity_lookup_changes_nothing() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(0))
    before = ledger.snapshot()
    with pytest.raises(IntensityUnavailableError):
        ledger.apply(delta(1, region="nowhere"))
    assert ledger.snapshot() == before
    assert ledger.apply(delta(1)) is not None  # the id was not marked as seen


def test_a_total_that_would_overflow_is_refused_not_corrupted() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(0, gpu_j=1.5e308))
    before = ledger.snapshot()
    with pytest.raises(ValidationError):
        ledger.apply(delta(1, gpu_j=1.5e308))  # the sum is inf
    assert ledger.snapshot() == before


@pytest.mark.parametrize("pue", [0.9, math.nan, math.inf])
def test_pue_must_be_finite_and_at_least_one(pue: float) -> None:
    with pytest.raises(ValueError, match="PUE"):
        CarbonLedger(TABLE, pue=pue)


def test_restore_rejects_malformed_snapshots() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(0))
    good = ledger.snapshot()
    with pytest.raises(ValidationError):
        CarbonLedger.restore(good | {"version": 2}, TABLE)
    negative = json.loads(json.dumps(good))
    negative["workloads"][0]["totals"]["gco2e"] = -1.0
    with pytest.raises(ValidationError):
        CarbonLedger.restore(negative, TABLE)
    twice = good | {"workloads": good["workloads"] * 2}
    with pytest.raises(ValidationError, match="twice"):
        CarbonLedger.restore(twice, TABLE)


def test_pruning_forgets_only_sources_not_heard_from_since() -> None:
    ledger = CarbonLedger(TABLE, pue=1.0)
    ledger.apply(delta(0, source="old/gpu0", at=T0))
    ledger.apply(delta(0, source="new/gpu0", at=T0 + timedelta(days=2)))
    assert ledger.prune_sources(T0 + timedelta(days=1)) == 1
    assert ledger.is_applied(DeltaId(source="new/gpu0", epoch=1, sequence=0))
    assert not ledger.is_applied(DeltaId(source="old/gpu0", epoch=1, sequence=0))
