"""moeops.telemetry: off without an endpoint, the Resource from the standard variables, exporters by protocol."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from moeops import telemetry


@pytest.fixture(autouse=True)
def no_active() -> Iterator[None]:
    yield
    telemetry._active = None


def test_off_without_an_endpoint() -> None:
    otel = telemetry.setup("operator", environ={"OTEL_SERVICE_NAME": "x"})
    assert not otel.enabled
    assert isinstance(otel.tracer_provider, trace.NoOpTracerProvider)
    otel.force_flush()
    otel.shutdown()


@pytest.mark.parametrize("key", [telemetry.ENDPOINT, telemetry.TRACES_ENDPOINT, telemetry.METRICS_ENDPOINT])
def test_any_endpoint_turns_it_on_unless_disabled(key: str) -> None:
    assert telemetry.enabled({key: "http://collector:4318"})
    assert not telemetry.enabled({key: "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"})
    otel = telemetry.setup("x", environ={key: "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not otel.enabled


def test_resource_attributes_and_service_name() -> None:
    env = {
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,k8s.node.name=override,team=a%2Cb,bad",
        "MOEOPS_POD_NAME": "server-0",
        "MOEOPS_NODE_NAME": "node-1",
        "POD_NAMESPACE": "ml",
    }
    attributes = telemetry.resource_attributes("server", env)
    assert attributes["service.name"] == "moeops-server"
    assert attributes["service.version"] == telemetry.package_version()
    assert attributes["k8s.pod.name"] == "server-0"
    assert attributes["k8s.node.name"] == "override"  # OTEL_RESOURCE_ATTRIBUTES wins over the Downward API
    assert attributes["k8s.namespace.name"] == "ml"
    assert attributes["team"] == "a,b"
    assert attributes["deployment.environment"] == "prod"
    env["OTEL_RESOURCE_ATTRIBUTES"] += ",service.name=from-attributes"
    assert telemetry.resource_attributes("server", env)["service.name"] == "from-attributes"
    env["OTEL_SERVICE_NAME"] = "from-env"
    assert telemetry.resource_attributes("server", env)["service.name"] == "from-env"


def test_protocol_and_interval() -> None:
    assert telemetry.protocol_of({}, telemetry.TRACES_PROTOCOL) == "http/protobuf"
    assert telemetry.protocol_of({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, telemetry.TRACES_PROTOCOL) == "grpc"
    per_signal = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", telemetry.METRICS_PROTOCOL: "http/protobuf"}
    assert telemetry.protocol_of(per_signal, telemetry.METRICS_PROTOCOL) == "http/protobuf"
    assert telemetry.protocol_of({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, telemetry.TRACES_PROTOCOL) == (
        "http/protobuf"
    )
    assert telemetry.export_interval_ms({}) == 60000
    assert telemetry.export_interval_ms({"OTEL_METRIC_EXPORT_INTERVAL": "250"}) == 250
    assert telemetry.export_interval_ms({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}) == 60000


@pytest.mark.parametrize(
    ("protocol", "span_type", "metric_type"),
    [("grpc", GrpcSpanExporter, GrpcMetricExporter), ("http/protobuf", HttpSpanExporter, HttpMetricExporter)],
)
def test_exporters_follow_the_protocol(protocol: str, span_type: type, metric_type: type) -> None:
    assert isinstance(telemetry._otlp_span_exporter(protocol), span_type)
    assert isinstance(telemetry._otlp_metric_exporter(protocol), metric_type)


def test_otlp_setup_builds_sdk_providers_without_touching_the_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens; never exported
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    otel = telemetry.setup("rebalancer", environ=env, set_global=False)
    try:
        assert otel.enabled
        assert telemetry._active is otel
        assert otel.tracer_provider.resource.attributes["service.name"] == "moeops-rebalancer"  # type: ignore[attr-defined]
        assert not isinstance(trace.get_tracer_provider(), type(otel.tracer_provider))
    finally:
        otel.shutdown()
    assert telemetry._active is None


def test_spans_and_metrics_reach_the_injected_exporter_and_reader() -> None:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    otel = telemetry.setup(
        "trainer", environ={"MOEOPS_POD_NAME": "w-0"}, span_exporter=spans, metric_reader=reader, set_global=False
    )
    with telemetry.tracer().start_as_current_span("checkpoint save", attributes={"moeops.rank": 0}):
        pass
    telemetry.meter().create_counter("moeops.test.things", unit="{thing}").add(3, {"a": "b"})
    otel.force_flush()
    (span,) = spans.get_finished_spans()
    assert span.name == "checkpoint save"
    assert span.resource.attributes["service.name"] == "moeops-trainer"
    assert span.resource.attributes["k8s.pod.name"] == "w-0"
    assert span.resource.attributes["telemetry.sdk.language"] == "python"
    data = reader.get_metrics_data()
    assert data is not None
    (resource_metrics,) = data.resource_metrics
    (metric,) = resource_metrics.scope_metrics[0].metrics
    assert (metric.name, metric.unit) == ("moeops.test.things", "{thing}")
    point = next(iter(metric.data.data_points))
    assert isinstance(point, NumberDataPoint) and point.attributes == {"a": "b"}
    otel.shutdown()
    otel.shutdown()  # idempotent


def test_without_the_sdk_it_runs_without_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails, as in an image without it
    otel = telemetry.setup("operator", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, set_global=False)
    assert not otel.enabled
    assert telemetry.active() is None
