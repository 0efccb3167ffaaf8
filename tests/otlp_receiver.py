"""A small OTLP/HTTP receiver for the tests: POST /v1/traces and /v1/metrics with protobuf bodies (gzip when the
Content-Encoding says so), decoded with opentelemetry-proto's ExportTraceServiceRequest / ExportMetricsServiceRequest
and kept in memory, on a loopback port in a thread. Components point OTEL_EXPORTER_OTLP_ENDPOINT at `endpoint`."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

T = TypeVar("T")


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def attributes(kvs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    resource: dict[str, Any]
    scope: str
    span: Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


@dataclass
class ReceivedMetric:
    resource: dict[str, Any]
    scope: str
    metric: Metric

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def unit(self) -> str:
        return self.metric.unit

    @property
    def kind(self) -> str:
        return str(self.metric.WhichOneof("data"))

    def points(self) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of each data point: as_int/as_double for gauges and sums, the point for histograms."""
        data = getattr(self.metric, self.kind)
        out = []
        for p in data.data_points:
            value = p if self.kind == "histogram" else getattr(p, str(p.WhichOneof("value")))
            out.append((attributes(p.attributes), value))
        return out


class OtlpReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._metrics: list[ReceivedMetric] = []
        self.requests: list[tuple[str, str]] = []
        """(path, Content-Encoding) of every request."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(415, "protobuf only")
                    return
                if self.path == "/v1/traces":
                    receiver._add_traces(ExportTraceServiceRequest.FromString(body))
                    answer = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver._add_metrics(ExportMetricsServiceRequest.FromString(body))
                    answer = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                with receiver._lock:
                    receiver.requests.append((self.path, encoding))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="otlp-receiver")

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self, interval_ms: int = 500) -> dict[str, str]:
        """What a component needs to export here over OTLP/HTTP, metrics every `interval_ms`, spans within 200 ms."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _add_traces(self, request: ExportTraceServiceRequest) -> None:
        got = [
            ReceivedSpan(attributes(rs.resource.attributes), ss.scope.name, span)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        with self._lock:
            self._spans += got

    def _add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        got = [
            ReceivedMetric(attributes(rm.resource.attributes), sm.scope.name, metric)
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]
        with self._lock:
            self._metrics += got

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def metrics(self) -> list[ReceivedMetric]:
        with self._lock:
            return list(self._metrics)

    def latest(self, name: str) -> ReceivedMetric | None:
        """The last export of metric `name`."""
        found = [m for m in self.metrics() if m.name == name]
        return found[-1] if found else None

    def wait(self, what: str, check: Callable[[], T | None], timeout_s: float = 30.0) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                names = sorted({m.name for m in self.metrics()} | {s.name for s in self.spans()})
                raise AssertionError(f"no {what} in {timeout_s} s; received: {names}")
            time.sleep(0.1)


def as_dict(message: Any) -> dict[str, Any]:
    """A received proto as a dict (for failure messages)."""
    return MessageToDict(message)
