"""The model server's latency histograms (serving/latency.py): time to first token, time per output token and
request duration under the GenAI semantic conventions' names, through OpenTelemetry and as Prometheus text."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from moeops.serving.latency import LatencyRecorder, LocalHistogram
from moeops.serving.otel import latency_export


def test_a_local_histogram_as_prometheus_text() -> None:
    h = LocalHistogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.record(value)
    assert h.prometheus("x_seconds", 'a="b"') == [
        'x_seconds_bucket{a="b",le="0.1"} 2', 'x_seconds_bucket{a="b",le="1"} 3', 'x_seconds_bucket{a="b",le="+Inf"} 4',
        'x_seconds_sum{a="b"} 3.65', 'x_seconds_count{a="b"} 4',
    ]  # fmt: skip


def test_the_recorder_feeds_opentelemetry_and_prometheus() -> None:
    reader = InMemoryMetricReader()
    recorder = LatencyRecorder(latency_export(MeterProvider(metric_readers=[reader]).get_meter("t")))
    recorder.first_token(10.0, "chat", "tiny", now=10.25)
    recorder.finished(10.0, 10.25, 5, "chat", "tiny", now=11.25)  # 4 tokens after the first in 1 s
    recorder.finished(20.0, None, 0, "text_completion", "tiny", now=20.5)  # none: no time per token
    data = reader.get_metrics_data()
    assert data is not None
    got: dict[str, list[HistogramDataPoint]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                assert m.unit == "s"
                got[m.name] = list(m.data.data_points)  # type: ignore[arg-type]
    (ttft,) = got["gen_ai.server.time_to_first_token"]
    assert ttft.sum == 0.25 and dict(ttft.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "tiny"}  # fmt: skip
    (tpot,) = got["gen_ai.server.time_per_output_token"]
    assert tpot.sum == 0.25 and tpot.count == 1
    assert sorted(p.sum for p in got["gen_ai.server.request.duration"]) == [0.5, 1.25]
    text = "\n".join(recorder.prometheus())
    assert "# TYPE gen_ai_server_time_to_first_token_seconds histogram" in text
    assert 'gen_ai_server_request_duration_seconds_count{gen_ai_operation_name="text_completion",' in text
    assert (
        'gen_ai_server_time_per_output_token_seconds_sum{gen_ai_operation_name="chat",gen_ai_request_model="tiny"} 0.25'
        in text
    )
