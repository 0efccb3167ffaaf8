"""The latency a client of the model server sees, per choice, as histograms under OpenTelemetry's semantic
conventions for generative AI (server metrics), both exported through OpenTelemetry and on /metrics:

    gen_ai.server.time_to_first_token   s   from the request's arrival to its first token reaching the event loop
    gen_ai.server.time_per_output_token s   after the first token: (end - first token) / (tokens - 1)
    gen_ai.server.request.duration      s   from arrival to the choice's end (finished, stopped, failed, cancelled)

with the attributes gen_ai.operation.name ("text_completion" or "chat") and gen_ai.request.model. Pure: the
OpenTelemetry histograms are the edge's (otel.py `latency_export`, handed in as `export`). On /metrics they are
Prometheus histograms named as the OpenTelemetry exporter names them (`gen_ai_server_time_to_first_token_seconds`
...), so the dashboard's queries read either source. Measured on the event loop, where tokens arrive once per
engine round: what a client is sent, not what a kernel took.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""The semantic conventions' advised buckets for time to first token."""
TPOT_BOUNDS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
"""For time per output token (the conventions' advice, with finer steps below 10 ms for small models)."""
DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""The conventions' advised buckets for request duration."""

Export = Callable[[str, float, Mapping[str, str]], None]
"""Where else a value goes: (instrument name, seconds, attributes)."""

INSTRUMENTS = {
    "gen_ai.server.time_to_first_token": ("Time to generate the first token.", TTFT_BOUNDS),
    "gen_ai.server.time_per_output_token": ("Time per output token after the first.", TPOT_BOUNDS),
    "gen_ai.server.request.duration": ("Generative AI server request duration.", DURATION_BOUNDS),
}


@dataclass
class LocalHistogram:
    """Cumulative bucket counts, a sum and a count, for the /metrics text (one label set)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def record(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def prometheus(self, name: str, labels: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {cumulative}')
        lines += [f"{name}_sum{{{labels}}} {self.total}", f"{name}_count{{{labels}}} {self.count}"]
        return lines


def prometheus_name(instrument: str) -> str:
    return instrument.replace(".", "_") + "_seconds"


class LatencyRecorder:
    """The three histograms, per (operation, model); records from the event loop only (no lock)."""

    def __init__(self, export: Export | None = None) -> None:
        self._export = export
        self._local: dict[tuple[str, str, str], LocalHistogram] = {}

    def _record(self, name: str, value: float, operation: str, model: str) -> None:
        key = (name, operation, model)
        if key not in self._local:
            self._local[key] = LocalHistogram(INSTRUMENTS[name][1])
        self._local[key].record(value)
        if self._export is not None:
            self._export(name, value, {"gen_ai.operation.name": operation, "gen_ai.request.model": model})

    def first_token(self, arrived: float, operation: str, model: str, now: float | None = None) -> None:
        self._record("gen_ai.server.time_to_first_token", (now or time.monotonic()) - arrived, operation, model)

    def finished(
        self, arrived: float, first: float | None, tokens: int, operation: str, model: str, now: float | None = None
    ) -> None:
        end = now or time.monotonic()
        self._record("gen_ai.server.request.duration", end - arrived, operation, model)
        if first is not None and tokens > 1:
            self._record("gen_ai.server.time_per_output_token", (end - first) / (tokens - 1), operation, model)

    def prometheus(self) -> list[str]:
        lines: list[str] = []
        for name, (description, _) in INSTRUMENTS.items():
            series = [(op, model, h) for (n, op, model), h in sorted(self._local.items()) if n == name]
            if not series:
                continue
            metric = prometheus_name(name)
            lines += [f"# HELP {metric} {description}", f"# TYPE {metric} histogram"]
            for op, model, histogram in series:
                labels = f'gen_ai_operation_name="{op}",gen_ai_request_model="{_escape(model)}"'
                lines += histogram.prometheus(metric, labels)
        return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
