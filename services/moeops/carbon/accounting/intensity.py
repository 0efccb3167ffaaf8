"""Grid carbon intensity (gCO2e per kWh) behind one protocol, and its two file-based sources.

Every source answers `intensity_at(region, when)` with an `Intensity` that says where the number came from
(`source`), for which region, and from when it holds (`valid_from`), so that each carbon figure the ledger computes
can be traced back to it. The sources here:

- `StaticIntensityTable`: yearly national averages from a CSV (the package ships `data/grid_intensity.csv`, Ember's
  2023 figures; `default_static_table()`); the fallback that always answers for a region it knows.
- `IntensitySeries`: a time series from a CSV (timestamp, region, g_co2e_per_kwh), read STEP-WISE: a value holds
  from its timestamp until the region's next one, and for at most `hold` after it. Grid operators publish
  intensities as averages over settlement periods (half-hours, hours), which is exactly a step function;
  interpolating would invent values between two periods, and across a gap in the data it would invent them for
  hours. A step that is too old raises instead, so a chain can fall back (`FirstAvailable`).
- `moeops.carbon.accounting.intensity_cache.CachedIntensity`: a live provider behind a TTL cache and backoff.

Pure apart from reading the files it is given; all times are timezone-aware (a naive datetime is refused, since a
grid's intensity at "08:00" means nothing without its zone).
"""

from __future__ import annotations

import bisect
import csv
import importlib.resources
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DEFAULT_TABLE = "grid_intensity.csv"
"""The static table shipped in `moeops/carbon/data/` (hatchling's `only-include` ships the whole folder)."""
DEFAULT_SERIES_HOLD = timedelta(hours=1)
"""How long a time-series value stays valid after its timestamp when no newer one follows: two hourly periods
missed is an outage of the feed, not a flat grid."""


class Intensity(BaseModel):
    """One grid carbon intensity and its provenance; `stale` marks a last-good value served past its TTL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    g_co2e_per_kwh: float = Field(ge=0.0, allow_inf_nan=False)
    source: str = Field(min_length=1)
    region: str = Field(min_length=1)
    valid_from: AwareDatetime
    stale: bool = False


STATIC_SOURCE_PREFIX = "static:"
"""The `source` of every value from a `StaticIntensityTable`: a yearly average, not a reading of the grid now."""


def is_live(intensity: Intensity) -> bool:
    """Whether the value says something about the grid now: neither a static yearly average nor a stale
    last-good value (what a carbon gate may act on)."""
    return not intensity.stale and not intensity.source.startswith(STATIC_SOURCE_PREFIX)


class IntensitySource(Protocol):
    """Anything that can say how carbon-intensive a region's grid electricity was at a moment."""

    def intensity_at(self, region: str, when: datetime) -> Intensity:
        """The intensity valid in `region` at `when`; raises `IntensityUnavailableError` when it has none."""
        ...


class IntensityUnavailableError(LookupError):
    """A source has no value for this region and time (a fallback may have one)."""


class UnknownRegionError(IntensityUnavailableError):
    """The region is not in the source at all; the message lists the regions that are."""

    def __init__(self, region: str, known: Sequence[str]) -> None:
        self.region = region
        self.known = tuple(sorted(known))
        super().__init__(f"unknown grid region {region!r}; known regions: {', '.join(self.known)}")


class IntensityDataError(ValueError):
    """A malformed intensity file, with the file and line at fault."""


def normalize_region(region: str) -> str:
    """Regions compare case-insensitively and without surrounding blanks ("DE", " de" and "de" are one)."""
    return region.strip().lower()


def _require_aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is required, got the naive {when.isoformat()}")


@dataclass(frozen=True)
class _Row:
    """One data line of an intensity CSV: where it came from (for error messages) and its cells."""

    where: str
    cells: Mapping[str, str]

    def value(self, column: str = "g_co2e_per_kwh") -> float:
        """The cell as a finite, non-negative intensity."""
        raw = self.cells[column]
        try:
            number = float(raw)
        except ValueError:
            raise IntensityDataError(f"{self.where}: {column} {raw!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise IntensityDataError(f"{self.where}: {column} must be finite and >= 0, got {raw!r}")
        return number


def _rows(text: str, origin: str, columns: Sequence[str]) -> Iterator[_Row]:
    """The data lines of a CSV with a header naming at least `columns`; lines starting with '#' are comments."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith("#")]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise IntensityDataError(f"{origin}: no header line")
    header_number, header = lines[0]
    names = [name.strip() for name in next(csv.reader([header]))]
    missing = [column for column in columns if column not in names]
    if missing:
        raise IntensityDataError(f"{origin}:{header_number}: header lacks the columns {missing}; it has {names}")
    for number, line in lines[1:]:
        cells = next(csv.reader([line]))  # one record per line: intensity files have no multi-line cells
        if len(cells) != len(names):
            raise IntensityDataError(f"{origin}:{number}: {len(cells)} cells, the header has {len(names)}")
        yield _Row(f"{origin}:{number}", {name: cell.strip() for name, cell in zip(names, cells, strict=True)})


class StaticIntensityTable:
    """Annual average intensity per region; an alias row (a cloud region) answers with its target's value.

    A value is reported as valid from 1 January (UTC) of its data year: it is that year's average, and it keeps
    being served in later years until the table is refreshed (the `valid_from` then shows how old it is).
    """

    def __init__(self, values: Mapping[str, Intensity], aliases: Mapping[str, str]) -> None:
        unresolved = {alias: target for alias, target in aliases.items() if target not in values}
        if unresolved:
            raise IntensityDataError(f"aliases to regions without a value: {unresolved}")
        self._values = dict(values)
        self._aliases = dict(aliases)

    @classmethod
    def from_csv(cls, text: str, origin: str = "<static table>") -> StaticIntensityTable:
        """Parse the table format of `data/grid_intensity.csv` (its header comment documents the columns)."""
        values: dict[str, Intensity] = {}
        aliases: dict[str, str] = {}
        for row in _rows(text, origin, ("region", "g_co2e_per_kwh", "year", "source", "alias_of")):
            region = normalize_region(row.cells["region"])
            if not region:
                raise IntensityDataError(f"{row.where}: empty region")
            if region in values or region in aliases:
                raise IntensityDataError(f"{row.where}: region {region!r} listed twice")
            if row.cells["alias_of"]:
                if row.cells["g_co2e_per_kwh"] or row.cells["year"] or row.cells["source"]:
                    raise IntensityDataError(f"{row.where}: an alias row carries no value, year or source")
                aliases[region] = normalize_region(row.cells["alias_of"])
                continue
            year = row.cells["year"]
            if not year.isdigit() or not row.cells["source"]:
                raise IntensityDataError(f"{row.where}: a value row needs a year and a source, got {year!r}")
            values[region] = Intensity(
                g_co2e_per_kwh=row.value(),
                source=f"{STATIC_SOURCE_PREFIX}{row.cells['source']}",
                region=region,
                valid_from=datetime(int(year), 1, 1, tzinfo=UTC),
            )
        return cls(values, aliases)

    @classmethod
    def from_file(cls, path: Path) -> StaticIntensityTable:
        """Read a table file (UTF-8)."""
        return cls.from_csv(path.read_text(encoding="utf-8"), str(path))

    @property
    def regions(self) -> tuple[str, ...]:
        """Every region this table answers for, aliases included, sorted."""
        return tuple(sorted([*self._values, *self._aliases]))

    def intensity_at(self, region: str, when: datetime) -> Intensity:
        """The region's annual average; `when` only has to be aware (the table has one value per region)."""
        _require_aware(when)
        key = normalize_region(region)
        target = self._aliases.get(key, key)
        found = self._values.get(target)
        if found is None:
            raise UnknownRegionError(region, self.regions)
        if target == key:
            return found
        return found.model_copy(update={"region": key, "source": f"{found.source} ({key} = {target})"})


def default_static_table() -> StaticIntensityTable:
    """The table shipped with the package (read through importlib.resources, so it works from a wheel)."""
    resource = importlib.resources.files("moeops.carbon").joinpath("data", DEFAULT_TABLE)
    return StaticIntensityTable.from_csv(resource.read_text(encoding="utf-8"), f"moeops.carbon/data/{DEFAULT_TABLE}")


class IntensitySeries:
    """Step-wise time series of intensity per region (see the module docstring for why steps, not lines)."""

    def __init__(self, points: Mapping[str, Sequence[Intensity]], *, hold: timedelta = DEFAULT_SERIES_HOLD) -> None:
        if hold <= timedelta(0):
            raise ValueError(f"hold must be positive, got {hold}")
        self._hold = hold
        merged: dict[str, list[Intensity]] = {}
        for region, series in points.items():
            merged.setdefault(normalize_region(region), []).extend(series)
        self._points = {region: sorted(series, key=lambda point: point.valid_from) for region, series in merged.items()}
        self._starts = {region: [point.valid_from for point in series] for region, series in self._points.items()}
        for region, starts in self._starts.items():
            if len(set(starts)) != len(starts):
                raise IntensityDataError(f"region {region!r} has two values for one timestamp")

    @classmethod
    def from_csv(
        cls, text: str, origin: str = "<series>", *, source: str | None = None, hold: timedelta = DEFAULT_SERIES_HOLD
    ) -> IntensitySeries:
        """Parse `timestamp,region,g_co2e_per_kwh` lines; timestamps are ISO 8601 with an offset (or `Z`)."""
        label = source or f"series:{Path(origin).name}"
        points: dict[str, list[Intensity]] = {}
        for row in _rows(text, origin, ("timestamp", "region", "g_co2e_per_kwh")):
            try:
                stamp = datetime.fromisoformat(row.cells["timestamp"])
                _require_aware(stamp)
            except ValueError as error:
                raise IntensityDataError(f"{row.where}: timestamp: {error}") from None
            region = normalize_region(row.cells["region"])
            point = Intensity(g_co2e_per_kwh=row.value(), source=label, region=region, valid_from=stamp)
            points.setdefault(region, []).append(point)
        try:
            return cls(points, hold=hold)
        except IntensityDataError as error:
            raise IntensityDataError(f"{origin}: {error}") from None

    @classmethod
    def from_file(cls, path: Path, *, hold: timedelta = DEFAULT_SERIES_HOLD) -> IntensitySeries:
        """Read a series file (UTF-8); its values are labelled `series:<file name>`."""
        return cls.from_csv(path.read_text(encoding="utf-8"), str(path), hold=hold)

    def intensity_at(self, region: str, when: datetime) -> Intensity:
        """The last value at or before `when`, if it is not older than `hold`."""
        _require_aware(when)
        key = normalize_region(region)
        starts = self._starts.get(key)
        if starts is None:
            raise UnknownRegionError(region, list(self._starts))
        index = bisect.bisect_right(starts, when) - 1
        if index < 0:
            raise IntensityUnavailableError(f"{region!r}: the series starts at {starts[0].isoformat()}, after {when}")
        point = self._points[key][index]
        if when - point.valid_from > self._hold:
            raise IntensityUnavailableError(
                f"{region!r}: the latest value before {when.isoformat()} is from {point.valid_from.isoformat()}, "
                f"older than {self._hold}"
            )
        return point


class FirstAvailable:
    """The first of several sources that has a value: e.g. a time series, then the static table."""

    def __init__(self, *sources: IntensitySource) -> None:
        if not sources:
            raise ValueError("FirstAvailable needs at least one source")
        self._sources = sources

    def intensity_at(self, region: str, when: datetime) -> Intensity:
        """Ask each source in turn; if none has a value, raise with every source's reason."""
        reasons: list[str] = []
        for source in self._sources:
            try:
                return source.intensity_at(region, when)
            except IntensityUnavailableError as error:
                reasons.append(str(error))
        raise IntensityUnavailableError("; ".join(reasons))
