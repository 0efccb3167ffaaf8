"""OTLP end to end: real components export to an OTLP/HTTP receiver the test runs (tests/otlp_receiver.py), and the
test reads what arrives: metric names, units, attributes, and the Resource (service.name and the pod's attributes).

- the model server (`python -m moeops.serving` on a tiny checkpoint) answering a completion: its engine's metrics and
  the request duration histogram, gzip-compressed as the standard variable asks;
- the rebalancer (`python -m moeops.rebalancer` on a real nats-server): its counters, and a clean exit's last export;
- the trainer (`moeops train` on CPU, 4 steps): a span per checkpoint save, and the last step's gauges.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from trainer_runs import train, write_config

from moeops.api import env
from moeops.api.v1alpha1.inferenceservice import BatchingSpec, EarlyExitSpec
from moeops.api.v1alpha1.runtime import ServingRuntimeConfig
from moeops.devcluster.nats_server import NatsServer
from moeops.telemetry import package_version
from otlp_receiver import OtlpReceiver
from serving_server import wait_ready, write_run

OTEL_KEYS = [key for key in os.environ if key.startswith("OTEL_")]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def component_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in OTEL_KEYS and k != env.NATS_URL}
    return {**environ, **receiver.env(interval_ms=300), "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.slow  # a model server process; the rebalancer's process below stays in the fast tier
def test_the_model_server_exports_its_metrics(tmp_path: Path, receiver: OtlpReceiver) -> None:
    write_run(tmp_path)
    (tmp_path / "config.json").replace(tmp_path / "checkpoints" / "config.json")
    port = free_port()
    config = ServingRuntimeConfig(service_name="chat", namespace="team-a", model_dir="/models", port=port,
                                  early_exit=EarlyExitSpec(enabled=True, threshold=0.0, min_layer=2),
                                  batching=BatchingSpec())  # fmt: skip
    environ = component_env(
        receiver,
        OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,k8s.node.name=node-%2F1",
        **{env.SERVING_CONFIG: config.model_dump_json(by_alias=True), env.MODEL_DIR: str(tmp_path / "checkpoints"),
           env.POD_NAME: "chat-0", env.NAMESPACE: "team-a"},
    )  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "moeops.serving", "--host", "127.0.0.1"], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url, timeout_s=90)
        body = httpx.post(f"{url}/v1/completions", json={"model": "chat", "prompt": "1+1=", "max_tokens": 3}).json()
        tokens = body["usage"]["completion_tokens"]

        def served() -> bool:
            generated = receiver.latest("moeops.server.tokens.generated")
            return generated is not None and generated.points()[0][1] == tokens

        receiver.wait("moeops.server.tokens.generated after the request", served, timeout_s=30)
    finally:
        out = stop(proc)
    print(f"server up and exported in {time.monotonic() - started:.1f} s")
    assert "Finished server process" in out, out

    generated = receiver.latest("moeops.server.tokens.generated")
    assert generated is not None
    resource = generated.resource
    assert resource["service.name"] == "moeops-server"
    assert resource["service.version"] == package_version()
    assert resource["k8s.pod.name"] == "chat-0"
    assert resource["k8s.namespace.name"] == "team-a"
    assert resource["k8s.node.name"] == "node-/1"
    assert resource["deployment.environment"] == "test"
    assert resource["telemetry.sdk.language"] == "python"
    assert generated.scope == "moeops.serving"
    assert (generated.unit, generated.kind) == ("{token}", "sum")
    assert generated.metric.sum.is_monotonic
    assert generated.points() == [({"moeops.model": "chat"}, tokens)]

    expected = {
        "moeops.server.requests.completed": ("{request}", "sum", 1),
        "moeops.server.in_flight": ("{sequence}", "gauge", 0),
        "moeops.server.queued": ("{request}", "gauge", 0),
        "moeops.server.exit_layer.mean": ("{layer}", "gauge", 2.0),  # exits at once from layer 2
    }
    for name, (unit, kind, value) in expected.items():
        metric = receiver.latest(name)
        assert metric is not None, name
        assert (metric.unit, metric.kind, metric.points()) == (unit, kind, [({"moeops.model": "chat"}, value)])
    rate = receiver.latest("moeops.server.tokens_per_second")
    assert rate is not None and rate.unit == "{token}/s"

    # FastAPI records an http.server.request.duration of its own (scope "fastapi", /readyz polls included): ours is
    # the one of scope moeops.serving, whichever of the two the last export listed last.
    durations = [
        m for m in receiver.metrics() if m.name == "http.server.request.duration" and m.scope == "moeops.serving"
    ]
    assert durations, sorted({(m.scope, m.name) for m in receiver.metrics()})
    duration = durations[-1]
    assert (duration.unit, duration.kind) == ("s", "histogram")
    ((attributes, histogram),) = duration.points()
    assert attributes == {"http.request.method": "POST", "http.route": "/v1/completions",
                          "http.response.status_code": 200}  # fmt: skip
    assert histogram.count == 1 and 0 < histogram.sum < 60
    assert list(histogram.explicit_bounds)[:3] == [0.005, 0.01, 0.025]
    # FastAPI traces its requests itself once a TracerProvider is set: the completion's span reaches the receiver too.
    print(sorted({(s.scope, s.name) for s in receiver.spans()}))
    completion_spans = [s for s in receiver.spans() if "/v1/completions" in s.name]
    assert completion_spans, [s.name for s in receiver.spans()]
    assert {s.resource["service.name"] for s in completion_spans} == {"moeops-server"}
    assert {encoding for _, encoding in receiver.requests} == {"gzip"}


@pytest.mark.nats
def test_the_rebalancer_exports_its_counters(nats_server: NatsServer, receiver: OtlpReceiver) -> None:
    environ = component_env(receiver, OTEL_SERVICE_NAME="rebalancer-east", **{env.NATS_URL: nats_server.url})
    proc = subprocess.Popen([sys.executable, "-m", "moeops.rebalancer"], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        receiver.wait("the rebalancer's counters", lambda: receiver.latest("moeops.rebalancer.plans.published"))
        exports = len(receiver.requests)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert len(receiver.requests) > exports  # shutdown's last export, on the way out
    published = receiver.latest("moeops.rebalancer.plans.published")
    assert published is not None
    assert published.resource["service.name"] == "rebalancer-east"
    assert published.resource["moeops.component"] == "rebalancer"
    assert (published.unit, published.kind, published.points()) == ("{plan}", "sum", [({}, 0)])
    received = receiver.latest("moeops.rebalancer.messages.received")
    assert received is not None and received.unit == "{message}"
    failed = receiver.latest("moeops.rebalancer.plans.failed")
    assert failed is not None
    assert sorted(a["moeops.plan.failure"] for a, _ in failed.points()) == ["conflict", "error"]


@pytest.mark.slow  # `moeops train`
def test_the_trainer_exports_step_phase_and_checkpoint_spans_and_its_last_step(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    config = write_config(tmp_path, steps=4)  # a checkpoint every 2 steps
    environ = component_env(receiver, OMP_NUM_THREADS="1", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf")
    done = train(config, 1, env=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    saves = [s for s in receiver.spans() if s.name == "checkpoint save"]
    assert sorted(s.attributes["moeops.step"] for s in saves) == [2, 4]
    assert {s.attributes["moeops.rank"] for s in saves} == {0}
    assert {(s.scope, s.resource["service.name"]) for s in saves} == {("moeops.trainer", "moeops-trainer")}
    steps = {s.span.span_id: s for s in receiver.spans() if s.name == "train step"}
    assert sorted(s.attributes["moeops.step"] for s in steps.values()) == [1, 2, 3, 4]
    phases = [s for s in receiver.spans() if s.name in ("forward backward", "gradient sync", "optimizer")]
    assert len(phases) == 3 * 4 and all(p.span.parent_span_id in steps for p in phases)
    step = receiver.latest("moeops.trainer.step")
    assert step is not None  # shutdown's export on the way out: the last step
    assert (step.unit, step.kind, step.points()) == ("{step}", "gauge", [({"moeops.rank": 0}, 4.0)])
    for name, unit in [("moeops.trainer.tokens_per_second", "{token}/s"), ("moeops.trainer.step.duration", "s"),
                       ("moeops.trainer.loss", "1")]:  # fmt: skip
        metric = receiver.latest(name)
        assert metric is not None and metric.unit == unit, name
        ((attributes, value),) = metric.points()
        assert attributes == {"moeops.rank": 0} and value > 0


AGENT = """
import sys, time
from fakes.fake_nvml import FakeGpu, FakeNvml, Trace
started = time.monotonic()
sys.modules["pynvml"] = FakeNvml([FakeGpu("GPU-otel", Trace.steady(300.0))], clock=lambda: time.monotonic() - started)
from moeops.carbon.cli import main
main(["agent"])
"""


@pytest.mark.slow  # a carbon agent process
@pytest.mark.nats
def test_the_carbon_agent_exports_hardware_metrics(
    tmp_path: Path, nats_server: NatsServer, receiver: OtlpReceiver
) -> None:
    """The node agent over the fake NVML (one GPU at a steady 300 W), NVML-only: hw.energy and hw.power."""
    tests = Path(__file__).resolve().parents[1]
    environ = component_env(
        receiver,
        PYTHONPATH=os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
        MOEOPS_CARBON_NVML_ONLY="true",
        MOEOPS_CARBON_POLL_S="0.2",
        MOEOPS_CARBON_SPOOL_DIR=str(tmp_path / "spool"),
        **{env.NATS_URL: nats_server.url, env.NODE_NAME: "node-a", env.CARBON_REGION: "de"},
    )
    proc = subprocess.Popen([sys.executable, "-c", AGENT], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:

        def energy() -> bool:
            metric = receiver.latest("hw.energy")
            return metric is not None and any(v > 0 for _, v in metric.points())

        receiver.wait("hw.energy from the agent", energy)
        receiver.wait("hw.power from the agent", lambda: receiver.latest("hw.power"))
    finally:
        out = stop(proc)
    energy_metric, power = receiver.latest("hw.energy"), receiver.latest("hw.power")
    assert energy_metric is not None and power is not None, out
    assert energy_metric.resource["service.name"] == "moeops-carbon-agent"
    assert energy_metric.resource["k8s.node.name"] == "node-a"
    assert energy_metric.scope == "moeops.carbon"
    assert (energy_metric.unit, energy_metric.kind) == ("J", "sum")
    assert energy_metric.metric.sum.is_monotonic
    gpu = {"hw.id": "GPU-otel", "hw.type": "gpu", "k8s.node.name": "node-a", "hw.name": "NVIDIA H100 80GB HBM3"}
    assert [a for a, _ in energy_metric.points()] == [gpu]
    assert (power.unit, power.kind) == ("W", "gauge")
    assert power.points() == [(gpu, pytest.approx(300.0))]


def test_grpc_protocol_exports_to_an_otlp_grpc_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the SDK's gRPC exporters, reading the endpoint from the environment, reach
    a gRPC OTLP receiver (opentelemetry-proto's services on a real grpc server). In process, without the globals."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    from moeops import telemetry

    got: dict[str, list[Any]] = {"spans": [], "metrics": []}

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 -- the service's method name
            got["spans"] += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
            got["metrics"] += [m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
               "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}  # fmt: skip
    for key, value in environ.items():
        monkeypatch.setenv(key, value)  # the exporters read them from os.environ
    otel = telemetry.setup("rebalancer", environ=environ, set_global=False)
    try:
        with otel.tracer().start_as_current_span("round"):
            pass
        otel.meter().create_counter("moeops.test.rounds", unit="{round}").add(2)
        otel.force_flush()
    finally:
        otel.shutdown()
        server.stop(grace=None)
    assert [s.name for s in got["spans"]] == ["round"]
    assert [(m.name, m.unit) for m in got["metrics"]][:1] == [("moeops.test.rounds", "{round}")]
