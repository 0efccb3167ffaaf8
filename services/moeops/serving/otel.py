"""The model server's OpenTelemetry metrics (the process configures the SDK: `moeops.telemetry.setup("server")`).

Read from the engine's own counters when the SDK's reader collects (`Engine.stats()`, no work per token), plus the
request duration measured by an ASGI middleware around the OpenAI routes:

    http.server.request.duration     Histogram, s       per request, to the last byte of the response (streams too);
                                                         http.request.method, http.route, http.response.status_code
    moeops.server.tokens.generated   Counter, {token}   tokens generated since the start
    moeops.server.requests.completed Counter, {request} completions finished
    moeops.server.tokens_per_second  Gauge, {token}/s   over the engine's rate window
    moeops.server.in_flight          Gauge, {sequence}  sequences being generated
    moeops.server.queued             Gauge, {request}   requests waiting for a place in the batch
    moeops.server.exit_layer.mean    Gauge, {layer}     mean exit layer over every token so far (early exit)
    gen_ai.server.*                  Histogram, s       time to first token, per output token, per request
                                                         (latency.py, recorded as tokens reach the event loop)

The `moeops.model` attribute (the served name) is on the engine's instruments once the model is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moeops import telemetry
from moeops.serving.decoding.engine import EngineStats
from moeops.serving.latency import INSTRUMENTS, Export

DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
TIMED_PREFIX = "/v1/"

StatsSource = Callable[[], "tuple[EngineStats, str] | None"]
"""The engine's stats and the served model's name; None before the model is loaded."""


def register_engine(meter: Meter, source: StatsSource) -> list[Any]:
    """Observable instruments reading the engine's stats when the reader collects."""

    def reading(pick: Callable[[EngineStats], float | None]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            got = source()
            if got is None:
                return []
            value = pick(got[0])
            return [] if value is None else [Observation(value, {"moeops.model": got[1]})]

        return observe

    p = "moeops.server"
    return [
        meter.create_observable_counter(f"{p}.tokens.generated", [reading(lambda s: s.tokens_generated)],
                                        unit="{token}", description="Tokens generated."),
        meter.create_observable_counter(f"{p}.requests.completed", [reading(lambda s: s.requests_completed)],
                                        unit="{request}", description="Completions finished."),
        meter.create_observable_gauge(f"{p}.tokens_per_second", [reading(lambda s: s.tokens_per_second)],
                                      unit="{token}/s", description="Tokens generated per second (rate window)."),
        meter.create_observable_gauge(f"{p}.in_flight", [reading(lambda s: s.in_flight)], unit="{sequence}",
                                      description="Sequences being generated."),
        meter.create_observable_gauge(f"{p}.queued", [reading(lambda s: s.queued)], unit="{request}",
                                      description="Requests waiting for a place in the batch."),
        meter.create_observable_gauge(f"{p}.exit_layer.mean", [reading(lambda s: s.mean_exit_layer)],
                                      unit="{layer}", description="Mean layer tokens exited at (early exit)."),
    ]  # fmt: skip


def latency_export(meter: Meter) -> Export:
    """The GenAI latency histograms (latency.py) as OpenTelemetry instruments: what LatencyRecorder exports to."""
    histograms = {
        name: meter.create_histogram(name, unit="s", description=description,
                                     explicit_bucket_boundaries_advisory=list(bounds))
        for name, (description, bounds) in INSTRUMENTS.items()
    }  # fmt: skip

    def export(name: str, value: float, attributes: Mapping[str, str]) -> None:
        histograms[name].record(value, dict(attributes))

    return export


def request_duration(meter: Meter) -> Histogram:
    return meter.create_histogram(
        "http.server.request.duration",
        unit="s",
        description="Duration of HTTP server requests.",
        explicit_bucket_boundaries_advisory=list(DURATION_BOUNDS),
    )


class RequestTimer:
    """ASGI middleware: the duration of each /v1/ request, from its start to the response's last byte."""

    def __init__(self, app: ASGIApp, histogram: Histogram | None = None) -> None:
        self.app = app
        self.histogram = histogram if histogram is not None else request_duration(telemetry.meter("moeops.serving"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(TIMED_PREFIX):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.histogram.record(
                time.perf_counter() - started,
                {"http.request.method": scope.get("method", ""), "http.route": path,
                 "http.response.status_code": status["code"]},
            )  # fmt: skip
