"""The components' OpenTelemetry instruments, read through the SDK's in-memory reader."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from moeops import telemetry
from moeops.rebalancer import otel as rebalancer_otel
from moeops.rebalancer.ingest import Counters
from moeops.serving import otel as serving_otel
from moeops.serving.decoding.engine import EngineStats
from moeops.trainer import otel as trainer_otel
from moeops.trainer.metrics import StepMetrics


def points(reader: InMemoryMetricReader) -> dict[tuple[str, str | None], list[tuple[dict[str, Any], Any]]]:
    data = reader.get_metrics_data()
    if data is None:  # nothing observed
        return {}
    out: dict[tuple[str, str | None], list[tuple[dict[str, Any], Any]]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[(m.name, m.unit)] = [(dict(p.attributes or {}), getattr(p, "value", p)) for p in m.data.data_points]
    return out


@pytest.fixture
def meter_and_reader() -> tuple[Any, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]).get_meter("t"), reader


def test_rebalancer_counters(meter_and_reader: tuple[Any, InMemoryMetricReader]) -> None:
    meter, reader = meter_and_reader
    counters = Counters()
    rebalancer_otel.register(meter, counters)
    counters.received = 7
    counters.ingested["accepted"] += 5
    counters.bad_messages["schema"] += 2
    counters.plans_published = 1
    counters.plan_conflicts = 1
    counters.verdicts["published"] += 1
    counters.plans_refused = 2
    counters.plans_judged["missed"] += 1
    got = points(reader)
    assert got[("moeops.rebalancer.messages.received", "{message}")] == [({}, 7)]
    assert got[("moeops.rebalancer.messages.ingested", "{message}")] == [({"moeops.ingest.result": "accepted"}, 5)]
    assert got[("moeops.rebalancer.messages.bad", "{message}")] == [({"moeops.bad_message.reason": "schema"}, 2)]
    assert got[("moeops.rebalancer.plans.published", "{plan}")] == [({}, 1)]
    assert sorted(v for _, v in got[("moeops.rebalancer.plans.failed", "{plan}")]) == [0, 1]
    assert got[("moeops.rebalancer.rounds", "{round}")] == [({"moeops.verdict": "published"}, 1)]
    assert got[("moeops.rebalancer.plans.refused", "{plan}")] == [({}, 2)]
    assert got[("moeops.rebalancer.plans.judged", "{plan}")] == [({"moeops.plan.outcome": "missed"}, 1)]


def test_server_engine_instruments(meter_and_reader: tuple[Any, InMemoryMetricReader]) -> None:
    meter, reader = meter_and_reader
    stats: list[EngineStats] = []
    serving_otel.register_engine(meter, lambda: (stats[0], "tiny") if stats else None)
    assert points(reader) == {}  # nothing before the model is loaded
    stats.append(EngineStats(2, 1, 50.0, 3.0, 1.5, 40, 4, 20, 5, 3))
    got = points(reader)
    model = {"moeops.model": "tiny"}
    assert got[("moeops.server.tokens.generated", "{token}")] == [(model, 40)]
    assert got[("moeops.server.requests.completed", "{request}")] == [(model, 4)]
    assert got[("moeops.server.tokens_per_second", "{token}/s")] == [(model, 50.0)]
    assert got[("moeops.server.in_flight", "{sequence}")] == [(model, 2)]
    assert got[("moeops.server.exit_layer.mean", "{layer}")] == [(model, 1.5)]


async def test_request_timer(meter_and_reader: tuple[Any, InMemoryMetricReader]) -> None:
    meter, reader = meter_and_reader

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(_: Any) -> None:
        return None

    timer = serving_otel.RequestTimer(app, serving_otel.request_duration(meter))
    await timer({"type": "http", "path": "/v1/completions", "method": "POST"}, None, send)  # type: ignore[arg-type]
    await timer({"type": "http", "path": "/healthz", "method": "GET"}, None, send)  # type: ignore[arg-type]
    ((attributes, histogram),) = points(reader)[("http.server.request.duration", "s")]
    assert attributes == {"http.request.method": "POST", "http.route": "/v1/completions",
                          "http.response.status_code": 404}  # fmt: skip
    assert histogram.count == 1


def test_trainer_gauges_and_spans(meter_and_reader: tuple[Any, InMemoryMetricReader]) -> None:
    meter, reader = meter_and_reader
    gauges = trainer_otel.StepGauges(meter)
    assert points(reader) == {}
    gauges.publish(StepMetrics(step=3, rank=1, loss=2.5, aux_loss=0.0, tokens=1000, step_seconds=0.5,
                               compute_seconds=0.4, comm_seconds=0.1, lr=1e-3))  # fmt: skip
    got = points(reader)
    assert got[("moeops.trainer.tokens_per_second", "{token}/s")] == [({"moeops.rank": 1}, 2000.0)]
    assert got[("moeops.trainer.step.duration", "s")] == [({"moeops.rank": 1}, 0.5)]
    assert got[("moeops.trainer.loss", "1")] == [({"moeops.rank": 1}, 2.5)]
    assert got[("moeops.trainer.step", "{step}")] == [({"moeops.rank": 1}, 3.0)]

    spans = InMemorySpanExporter()
    otel = telemetry.setup("trainer", environ={}, span_exporter=spans, metric_reader=InMemoryMetricReader(),
                           set_global=False)  # fmt: skip
    try:
        with trainer_otel.span("checkpoint save", 0, step=10):
            pass
        otel.force_flush()
        (span,) = spans.get_finished_spans()
        assert span.name == "checkpoint save"
        assert dict(span.attributes or {}) == {"moeops.rank": 0, "moeops.step": 10}
    finally:
        otel.shutdown()
