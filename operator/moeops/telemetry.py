"""OpenTelemetry for every moeops component: one `setup(component)` at start, one `shutdown()` at exit.

Off unless asked for. Without an OTLP endpoint in the environment (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the
per-signal `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`), or with
`OTEL_SDK_DISABLED=true`, nothing is configured: the API's no-op (proxy) providers stay in place and every span or
instrument costs next to nothing. Otherwise:

- a Resource: `OTEL_RESOURCE_ATTRIBUTES`, `service.name` (`OTEL_SERVICE_NAME`, else the attribute, else
  `moeops-<component>`), `service.version` (the package's), and the pod's `k8s.pod.name`, `k8s.node.name` and
  `k8s.namespace.name` from MOEOPS_POD_NAME / MOEOPS_NODE_NAME / MOEOPS_NAMESPACE (or POD_NAMESPACE) when the
  Downward API sets them (OTEL_RESOURCE_ATTRIBUTES wins over those);
- a TracerProvider with a BatchSpanProcessor, and a MeterProvider with a PeriodicExportingMetricReader
  (`OTEL_METRIC_EXPORT_INTERVAL` ms, 60000 by default);
- OTLP exporters over `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the default) or `grpc` (per signal:
  `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `..._METRICS_PROTOCOL`). The exporters read their endpoint, headers,
  certificates, compression and timeout from the standard variables themselves;
- both set as the global providers, so instruments made through `opentelemetry.metrics.get_meter` (also before
  `setup`, as the API's proxies forward) and `moeops.telemetry.tracer` / `meter` reach them.

Only opentelemetry-* here: every component (operator, services) may import it; pure modules never do.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter, MeterProvider
from opentelemetry.trace import Tracer, TracerProvider

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
METRICS_PROTOCOL = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
SDK_DISABLED = "OTEL_SDK_DISABLED"
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
METRIC_EXPORT_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
DEFAULT_EXPORT_INTERVAL_MS = 60000.0
HTTP = "http/protobuf"
GRPC = "grpc"
INSTRUMENTATION = "moeops"

K8S_ENV = {
    "k8s.pod.name": ("MOEOPS_POD_NAME", "POD_NAME"),
    "k8s.node.name": ("MOEOPS_NODE_NAME", "NODE_NAME"),
    "k8s.namespace.name": ("MOEOPS_NAMESPACE", "POD_NAMESPACE"),
}


def package_version() -> str:
    try:
        return version("moeops")
    except PackageNotFoundError:  # a source tree without the installed metadata
        return "0.0.0"


def enabled(environ: Mapping[str, str]) -> bool:
    """Whether `setup` configures the SDK: an OTLP endpoint is set and the SDK is not disabled."""
    if environ.get(SDK_DISABLED, "").strip().lower() == "true":
        return False
    return any(environ.get(key, "").strip() for key in (ENDPOINT, TRACES_ENDPOINT, METRICS_ENDPOINT))


def parse_resource_attributes(raw: str) -> dict[str, str]:
    """`OTEL_RESOURCE_ATTRIBUTES`: `key1=value1,key2=value2`, values percent-encoded; malformed pairs skipped."""
    attributes: dict[str, str] = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            if pair.strip():
                logger.warning("%s: skipping %r (not key=value)", RESOURCE_ATTRIBUTES, pair)
            continue
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def resource_attributes(component: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The Resource's attributes (without the telemetry.sdk.* ones the SDK adds)."""
    attributes: dict[str, str] = {"service.name": f"moeops-{component}", "service.version": package_version()}
    attributes["service.namespace"] = "moeops"
    attributes["moeops.component"] = component
    for key, names in K8S_ENV.items():
        value = next((environ[n] for n in names if environ.get(n)), None)
        if value:
            attributes[key] = value
    attributes.update(parse_resource_attributes(environ.get(RESOURCE_ATTRIBUTES, "")))
    if environ.get(SERVICE_NAME_ENV, "").strip():
        attributes["service.name"] = environ[SERVICE_NAME_ENV].strip()
    return attributes


def protocol_of(environ: Mapping[str, str], signal_key: str) -> str:
    chosen = (environ.get(signal_key) or environ.get(PROTOCOL) or HTTP).strip().lower()
    if chosen not in (HTTP, GRPC):
        logger.warning("OTLP protocol %r is not supported (grpc | http/protobuf): using %s", chosen, HTTP)
        return HTTP
    return chosen


def export_interval_ms(environ: Mapping[str, str]) -> float:
    raw = environ.get(METRIC_EXPORT_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_EXPORT_INTERVAL_MS
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number of milliseconds: using %s", METRIC_EXPORT_INTERVAL, raw,
                       DEFAULT_EXPORT_INTERVAL_MS)  # fmt: skip
        return DEFAULT_EXPORT_INTERVAL_MS
    return value if value > 0 else DEFAULT_EXPORT_INTERVAL_MS


@dataclass
class Telemetry:
    """What `setup` made: the component's providers (the API's no-op ones when telemetry is off)."""

    component: str
    tracer_provider: TracerProvider = field(default_factory=trace.NoOpTracerProvider)
    meter_provider: MeterProvider = field(default_factory=metrics.NoOpMeterProvider)
    enabled: bool = False

    def tracer(self, name: str = INSTRUMENTATION) -> Tracer:
        return self.tracer_provider.get_tracer(name, package_version())

    def meter(self, name: str = INSTRUMENTATION) -> Meter:
        return self.meter_provider.get_meter(name, package_version())

    def force_flush(self, timeout_millis: int = 10000) -> None:
        """Export what is pending now (spans in the batch, a metrics collection)."""
        for provider in (self.tracer_provider, self.meter_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters (idempotent). Call it on exit: the last spans and metrics go out here."""
        global _active
        if _active is self:
            _active = None
        if not self.enabled:
            return
        self.enabled = False
        for provider in (self.tracer_provider, self.meter_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                try:
                    stop()
                except Exception:  # exporting at exit must never turn a clean exit into a crash
                    logger.exception("OpenTelemetry %s shutdown failed", type(provider).__name__)


_active: Telemetry | None = None


def active() -> Telemetry | None:
    """The Telemetry of the last `setup` that turned it on (None: off, or shut down)."""
    return _active


def flush() -> None:
    """Export what is pending now, if telemetry is on: for exits that skip `shutdown` (uvicorn re-raises SIGTERM)."""
    if _active is not None:
        _active.force_flush()


def tracer(name: str = INSTRUMENTATION) -> Tracer:
    """A tracer of the configured Telemetry (the last `setup`), else of the global provider (no-op if none)."""
    if _active is not None:
        return _active.tracer(name)
    return trace.get_tracer(name, package_version())


def meter(name: str = INSTRUMENTATION) -> Meter:
    """A meter of the configured Telemetry (the last `setup`), else of the global provider (no-op if none)."""
    if _active is not None:
        return _active.meter(name)
    return metrics.get_meter(name, package_version())


def setup(
    component: str,
    *,
    environ: Mapping[str, str] = os.environ,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    set_global: bool = True,
) -> Telemetry:
    """Configure OpenTelemetry for `component` (e.g. "operator", "server", "trainer") from the environment.

    `span_exporter` (a SpanExporter) and `metric_reader` (a MetricReader) replace the OTLP ones and turn telemetry
    on regardless of the endpoint variables (tests: the SDK's in-memory exporter and reader). `set_global=False`
    leaves the global providers alone (tests: the globals can be set once per process only).
    """
    global _active
    injected = span_exporter is not None or metric_reader is not None
    if environ.get(SDK_DISABLED, "").strip().lower() == "true" or not (injected or enabled(environ)):
        return Telemetry(component)
    try:
        configured = _configure(component, environ, span_exporter, metric_reader, set_global)
    except ImportError as exc:  # an image without the SDK or an exporter: run without telemetry, and say so
        logger.warning("OpenTelemetry is asked for but not installed (the `telemetry` extra): %s", exc)
        return Telemetry(component)
    _active = configured
    service = resource_attributes(component, environ)["service.name"]
    logger.info("OpenTelemetry on for %s (service.name %s)", component, service)
    return configured


def _configure(
    component: str,
    environ: Mapping[str, str],
    span_exporter: SpanExporter | None,
    metric_reader: MetricReader | None,
    set_global: bool,
) -> Telemetry:
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.get_empty().merge(_sdk_resource()).merge(Resource(resource_attributes(component, environ)))
    tracer_provider = SdkTracerProvider(resource=resource)
    if span_exporter is None:
        span_exporter = _otlp_span_exporter(protocol_of(environ, TRACES_PROTOCOL))
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if metric_reader is None:
        metric_reader = PeriodicExportingMetricReader(
            _otlp_metric_exporter(protocol_of(environ, METRICS_PROTOCOL)),
            export_interval_millis=export_interval_ms(environ),
        )
    meter_provider = SdkMeterProvider(resource=resource, metric_readers=[metric_reader])
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return Telemetry(component, tracer_provider, meter_provider, enabled=True)


def _sdk_resource() -> Resource:
    """telemetry.sdk.* as the SDK's Resource.create adds them (without its reading of os.environ)."""
    from opentelemetry.sdk.resources import (
        TELEMETRY_SDK_LANGUAGE,
        TELEMETRY_SDK_NAME,
        TELEMETRY_SDK_VERSION,
        Resource,
    )

    try:
        sdk_version = version("opentelemetry-sdk")
    except PackageNotFoundError:
        sdk_version = "unknown"
    return Resource(
        {TELEMETRY_SDK_LANGUAGE: "python", TELEMETRY_SDK_NAME: "opentelemetry", TELEMETRY_SDK_VERSION: sdk_version}
    )


def _otlp_span_exporter(protocol: str) -> SpanExporter:
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter()


def _otlp_metric_exporter(protocol: str) -> MetricExporter:
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter()
