"""The operator's grid carbon intensity: a time-series CSV if configured, else the static table (reads files).

`MOEOPS_CARBON_INTENSITY_SERIES` names a step-wise series (`timestamp,region,g_co2e_per_kwh`, see
`moeops.carbon.accounting.intensity.IntensitySeries`), for tests and for users who export a grid operator's feed to a
file (a ConfigMap mounted into the operator's pod works: the file is re-read whenever its modification time or size
changes). A region or moment the series lacks falls back to the shipped static table of yearly averages. A file
that is missing or malformed is reported as the series' reason, never raised: the gate then falls back too.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from moeops.carbon.accounting.intensity import (
    Intensity,
    IntensityDataError,
    IntensitySeries,
    IntensitySource,
    IntensityUnavailableError,
    UnknownRegionError,
    default_static_table,
)

from .planning.carbon_gate import Reading, Unavailable

logger = logging.getLogger(__name__)


class _SeriesFile:
    """A series file, parsed again when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._series: IntensitySeries | None = None
        self._error = ""

    def current(self) -> IntensitySeries:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise IntensityUnavailableError(f"series {self.path}: {exc.strerror or exc}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._series, self._error = IntensitySeries.from_file(self.path), ""
            except (OSError, IntensityDataError) as exc:
                self._series, self._error = None, str(exc)
                logger.warning("carbon intensity series unusable: %s", exc)
        if self._series is None:
            raise IntensityUnavailableError(f"series {self.path}: {self._error}")
        return self._series

    def intensity_at(self, region: str, when: datetime) -> Intensity:
        return self.current().intensity_at(region, when)


class GridIntensity:
    """Reads the intensity for the carbon gate: the series first (when configured), then the static table."""

    def __init__(self, series_path: str = "") -> None:
        self._series = _SeriesFile(Path(series_path)) if series_path else None
        self._static: IntensitySource = default_static_table()

    def reading(self, region: str, when: datetime) -> Reading:
        """The intensity, or why there is none (UnknownRegion when no source knows the region at all)."""
        reasons: list[str] = []
        unknown_everywhere = True
        sources: list[tuple[str, IntensitySource]] = []
        if self._series is not None:
            sources.append(("series", self._series))
        sources.append(("static table", self._static))
        for label, source in sources:
            try:
                return source.intensity_at(region, when)
            except UnknownRegionError:
                reasons.append(f"{label}: unknown region {region!r}")
            except IntensityUnavailableError as exc:
                unknown_everywhere = False
                reasons.append(f"{label}: {exc}")
        return Unavailable("UnknownRegion" if unknown_everywhere else "NoIntensity", "; ".join(reasons))
