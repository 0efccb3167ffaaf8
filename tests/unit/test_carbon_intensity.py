"""Grid intensity sources: the shipped static table, step-wise time series, and the cached, backed-off provider."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from moeops.carbon.accounting.intensity import (
    FirstAvailable,
    Intensity,
    IntensityDataError,
    IntensitySeries,
    IntensityUnavailableError,
    StaticIntensityTable,
    UnknownRegionError,
    default_static_table,
)
from moeops.carbon.accounting.intensity_cache import CachedIntensity, CachePolicy

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
HEADER = "region,g_co2e_per_kwh,year,source,alias_of,name\n"
SERIES = """# a comment line
timestamp,region,g_co2e_per_kwh
2026-11-29T00:00:00Z,GB,200
2026-11-29T00:30:00+00:00,gb,150.5
2026-11-29T02:00:00+01:00,gb,300
"""


# -- the static table ---------------------------------------------------------------------------------------------


def test_shipped_table_has_the_major_grids_with_plausible_annual_values() -> None:
    table = default_static_table()
    for region in ("world", "us", "cn", "in", "jp", "au", "gb", "de", "fr", "pl", "se", "no", "br", "ca"):
        intensity = table.intensity_at(region, NOW)
        assert 10 <= intensity.g_co2e_per_kwh <= 1000, region
        assert intensity.source == "static:ember-2023"
        assert intensity.valid_from == datetime(2023, 1, 1, tzinfo=UTC)
    assert table.intensity_at("fr", NOW).g_co2e_per_kwh == 56.0
    assert table.intensity_at("de", NOW).g_co2e_per_kwh == 381.0
    assert len(table.regions) >= 36


def test_shipped_table_cites_its_source_and_says_it_holds_annual_averages() -> None:
    text = (Path(__file__).resolve().parents[2] / "services/moeops/carbon/data/grid_intensity.csv").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "Ember" in header and "https://" in header and "ANNUAL AVERAGES" in header


def test_lookup_ignores_case_and_blanks_and_resolves_cloud_aliases() -> None:
    table = default_static_table()
    assert table.intensity_at(" DE ", NOW) == table.intensity_at("de", NOW)
    frankfurt = table.intensity_at("aws:eu-central-1", NOW)
    assert frankfurt.g_co2e_per_kwh == table.intensity_at("de", NOW).g_co2e_per_kwh
    assert frankfurt.region == "aws:eu-central-1"
    assert frankfurt.source == "static:ember-2023 (aws:eu-central-1 = de)"


def test_unknown_region_error_lists_the_known_regions() -> None:
    table = StaticIntensityTable.from_csv(HEADER + "b,10,2024,s,,B\na,20,2024,s,,A\nc:1,,,,a,alias\n")
    with pytest.raises(UnknownRegionError, match=r"'mars'; known regions: a, b, c:1") as error:
        table.intensity_at("mars", NOW)
    assert error.value.known == ("a", "b", "c:1")
    assert isinstance(error.value, IntensityUnavailableError)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        default_static_table().intensity_at("de", datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a,-5,2024,s,,\n", r"<static table>:3: g_co2e_per_kwh must be finite and >= 0"),
        ("a,nan,2024,s,,\n", "must be finite"),
        ("a,lots,2024,s,,\n", "is not a number"),
        ("a,5,2024,s,,\nA,6,2024,s,,\n", "listed twice"),
        ("a,5,,s,,\n", "needs a year and a source"),
        ("a,5,2024,s,b,\n", "alias row carries no value"),
        ("x,,,,missing,\n", "aliases to regions without a value"),
        ("a,5,2024\n", "3 cells, the header has 6"),
    ],
)
def test_malformed_static_tables_are_refused_with_the_line(rows: str, message: str) -> None:
    with pytest.raises(IntensityDataError, match=message):
        StaticIntensityTable.from_csv("# comment\n" + HEADER + rows)


def test_a_table_without_the_needed_columns_is_refused() -> None:
    with pytest.raises(IntensityDataError, match=r"lacks the columns \['alias_of'\]"):
        StaticIntensityTable.from_csv("region,g_co2e_per_kwh,year,source\na,1,2024,s\n")


def test_static_table_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "grid.csv"
    path.write_text(HEADER + "zz,123.4,2022,mine,,Z\n", encoding="utf-8")
    intensity = StaticIntensityTable.from_file(path).intensity_at("zz", NOW)
    assert (intensity.g_co2e_per_kwh, intensity.source) == (123.4, "static:mine")


# -- the time series ----------------------------------------------------------------------------------------------


def series(hold: timedelta = timedelta(hours=1)) -> IntensitySeries:
    return IntensitySeries.from_csv(SERIES, "/data/gb.csv", hold=hold)


def test_series_is_step_wise() -> None:
    at = datetime(2026, 11, 29, tzinfo=UTC)
    assert series().intensity_at("gb", at).g_co2e_per_kwh == 200.0
    assert series().intensity_at("gb", at + timedelta(minutes=29, seconds=59)).g_co2e_per_kwh == 200.0  # no slope
    step = series().intensity_at("GB", at + timedelta(minutes=30))
    assert (step.g_co2e_per_kwh, step.valid_from, step.source) == (150.5, at + timedelta(minutes=30), "series:gb.csv")
    assert series().intensity_at("gb", at + timedelta(minutes=59)).g_co2e_per_kwh == 150.5
    # 02:00+01:00 is 01:00 UTC: offsets are honoured.
    assert series().intensity_at("gb", at + timedelta(hours=1)).g_co2e_per_kwh == 300.0


def test_series_refuses_times_before_its_start_or_past_hold() -> None:
    start = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    with pytest.raises(IntensityUnavailableError, match="starts at"):
        series().intensity_at("gb", start - timedelta(seconds=1))
    last = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    assert series().intensity_at("gb", last + timedelta(hours=1)).g_co2e_per_kwh == 300.0
    with pytest.raises(IntensityUnavailableError, match="older than 1:00:00"):
        series().intensity_at("gb", last + timedelta(hours=1, seconds=1))
    assert series(hold=timedelta(days=1)).intensity_at("gb", last + timedelta(hours=5)).g_co2e_per_kwh == 300.0


def test_series_unknown_region_and_bad_rows() -> None:
    with pytest.raises(UnknownRegionError, match="known regions: gb"):
        series().intensity_at("fr", NOW)
    with pytest.raises(IntensityDataError, match="two values for one timestamp"):
        IntensitySeries.from_csv(SERIES + "2026-11-29T00:00:00+00:00,gb,1\n")
    with pytest.raises(IntensityDataError, match=r":3: timestamp: a timezone-aware"):
        IntensitySeries.from_csv("timestamp,region,g_co2e_per_kwh\n\n2026-11-29T00:00:00,gb,1\n")
    with pytest.raises(IntensityDataError, match="must be finite"):
        IntensitySeries.from_csv("timestamp,region,g_co2e_per_kwh\n2026-11-29T00:00:00Z,gb,inf\n")


def test_series_falls_back_to_the_static_table() -> None:
    chain = FirstAvailable(series(), default_static_table())
    assert chain.intensity_at("gb", datetime(2026, 11, 29, 0, 10, tzinfo=UTC)).source == "series:gb.csv"
    assert chain.intensity_at("gb", NOW).source == "static:ember-2023"  # the series is hours old by noon
    other_regions = StaticIntensityTable.from_csv(HEADER + "fr,56,2023,s,,\n")
    with pytest.raises(IntensityUnavailableError, match=r"older than.*; unknown grid region 'gb'"):
        FirstAvailable(series(), other_regions).intensity_at("gb", NOW)


# -- the cached provider ------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProvider:
    """Answers 100, 101, 102 … g/kWh, or raises while `down`."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    def __call__(self, region: str, when: datetime) -> Intensity:
        self.calls += 1
        if self.down:
            raise ConnectionError("provider unreachable")
        value = 99.0 + self.calls
        return Intensity(g_co2e_per_kwh=value, source="live:fake", region=region, valid_from=when)


POLICY = CachePolicy(ttl_s=60.0, initial_backoff_s=10.0, max_backoff_s=40.0, max_stale_s=600.0)


def cached(fallback: StaticIntensityTable | None = None) -> tuple[CachedIntensity, FakeProvider, FakeClock]:
    provider, clock = FakeProvider(), FakeClock()
    return CachedIntensity(provider, fallback=fallback, policy=POLICY, clock=clock), provider, clock


def test_values_are_reused_within_the_ttl_and_refetched_after() -> None:
    source, provider, clock = cached()
    assert source.intensity_at("de", NOW).g_co2e_per_kwh == 100.0
    clock.now += 59.9
    assert source.intensity_at("DE", NOW).g_co2e_per_kwh == 100.0
    assert provider.calls == 1
    clock.now += 0.1
    assert source.intensity_at("de", NOW).g_co2e_per_kwh == 101.0
    assert source.intensity_at("fr", NOW).g_co2e_per_kwh == 102.0  # per region
    assert provider.calls == 3


def test_failures_back_off_exponentially_and_serve_the_last_value_as_stale() -> None:
    source, provider, clock = cached()
    source.intensity_at("de", NOW)
    provider.down = True
    retries: list[float] = []
    start = clock.now
    clock.now += 60.0
    while clock.now < start + 60.0 + 200.0:
        calls = provider.calls
        served = source.intensity_at("de", NOW)
        assert (served.g_co2e_per_kwh, served.stale, served.source) == (100.0, True, "live:fake")
        if provider.calls > calls:
            retries.append(clock.now - start - 60.0)
        clock.now += 1.0
    assert retries == [0.0, 10.0, 30.0, 70.0, 110.0, 150.0, 190.0]  # waits 10, 20, 40, then capped at 40
    assert source.failures("de") == 7
    provider.down = False
    clock.now = start + 60.0 + 230.0  # the next retry time
    fresh = source.intensity_at("de", NOW)
    assert fresh.stale is False and source.failures("de") == 0


def test_too_old_a_value_or_none_at_all_falls_back_to_the_static_table() -> None:
    table = default_static_table()
    source, provider, clock = cached(fallback=table)
    provider.down = True
    assert source.intensity_at("de", NOW) == table.intensity_at("de", NOW)  # never succeeded
    provider.down = False
    clock.now += 10.0
    source.intensity_at("de", NOW)
    provider.down = True
    clock.now += 600.0
    assert source.intensity_at("de", NOW).stale is True  # exactly max_stale_s old: still served
    clock.now += 0.5
    assert source.intensity_at("de", NOW).source == "static:ember-2023"


def test_without_a_fallback_the_error_says_why() -> None:
    source, provider, _ = cached()
    provider.down = True
    with pytest.raises(IntensityUnavailableError, match=r"failed 1 time.*ConnectionError: provider unreachable"):
        source.intensity_at("de", NOW)


def test_a_provider_answer_that_is_not_an_intensity_counts_as_a_failure() -> None:
    source = CachedIntensity(lambda region, when: 42.0, policy=POLICY, clock=FakeClock())  # type: ignore[arg-type, return-value]
    with pytest.raises(IntensityUnavailableError, match="TypeError: the provider returned float"):
        source.intensity_at("de", NOW)


def test_backoff_policy() -> None:
    assert [POLICY.backoff_s(n) for n in (1, 2, 3, 4, 9)] == [10.0, 20.0, 40.0, 40.0, 40.0]
    with pytest.raises(ValueError, match="initial_backoff_s"):
        CachePolicy(initial_backoff_s=100.0, max_backoff_s=10.0)
    with pytest.raises(ValueError, match="ttl_s"):
        CachePolicy(ttl_s=600.0, max_stale_s=60.0)


def test_intensity_values_are_validated() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="g_co2e_per_kwh"):
            Intensity(g_co2e_per_kwh=bad, source="s", region="r", valid_from=NOW)
