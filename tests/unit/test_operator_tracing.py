"""The operator's spans per handler call (outcome, resource attributes) and the training jobs' gauges."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import kopf
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from moeops import telemetry
from moeops.operator.handlers import observe
from moeops.operator.handlers.common import api_errors_to_kopf
from moeops.operator.kube import ApiError

BODY = {
    "apiVersion": "moeops.dev/v1alpha1",
    "kind": "MoETrainingJob",
    "metadata": {"namespace": "ml", "name": "job-a"},
}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    otel = telemetry.setup("operator", environ={}, span_exporter=exporter, set_global=False,
                           metric_reader=InMemoryMetricReader())  # fmt: skip
    yield exporter
    otel.shutdown()


def finished(exporter: InMemorySpanExporter) -> list[Any]:
    assert telemetry._active is not None
    telemetry._active.force_flush()
    return list(exporter.get_finished_spans())


def test_sync_handler_ok(spans: InMemorySpanExporter) -> None:
    @observe.traced()
    def reconcile_training_job(body: Any, **_: Any) -> str:
        return "done"

    assert reconcile_training_job(body=BODY, memo={}) == "done"
    (span,) = finished(spans)
    assert span.name == "reconcile MoETrainingJob"
    assert dict(span.attributes) == {
        "k8s.namespace.name": "ml",
        "moeops.resource.kind": "MoETrainingJob",
        "moeops.resource.name": "job-a",
        "moeops.handler": "reconcile_training_job",
        "moeops.outcome": "ok",
    }
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ApiError("flaky", status=503, transient=True), "temporary_error"),
        (ApiError("forbidden", status=403, transient=False), "permanent_error"),
        (RuntimeError("bug"), "error"),
    ],
)
def test_sync_handler_errors(spans: InMemorySpanExporter, error: Exception, outcome: str) -> None:
    @observe.traced()
    @api_errors_to_kopf
    def handler(**_: Any) -> None:
        raise error

    with pytest.raises((kopf.TemporaryError, kopf.PermanentError, RuntimeError)):
        handler(body=BODY)
    (span,) = finished(spans)
    assert span.attributes["moeops.outcome"] == outcome
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception"


async def test_async_handler_and_child_owner_label(spans: InMemorySpanExporter) -> None:
    job = {"kind": "Job", "metadata": {"namespace": "ml", "name": "job-a-workers", "labels": {"owner": "job-a"}}}

    @observe.traced("MoETrainingJob", owner_label="owner")
    async def worker_job_changed(**_: Any) -> int:
        return 1

    @observe.traced()
    async def copy_rebalancer_report(**_: Any) -> None:
        raise kopf.TemporaryError("later")

    assert await worker_job_changed(body=job) == 1
    with pytest.raises(kopf.TemporaryError):
        await copy_rebalancer_report(body={}, namespace="ml", name="job-b")
    first, second = finished(spans)
    assert first.name == "reconcile MoETrainingJob"
    assert first.attributes["moeops.resource.name"] == "job-a"
    assert first.attributes["moeops.handler"] == "worker_job_changed"
    assert second.attributes["moeops.resource.name"] == "job-b"
    assert second.attributes["moeops.outcome"] == "temporary_error"


def test_registered_handlers_keep_their_names() -> None:
    from moeops.operator.handlers import training

    # kopf types a registered handler as its callback protocol, which has no names.
    assert training.reconcile_training_job.__qualname__ == "reconcile_training_job"  # type: ignore[attr-defined]
    assert training.schedule_ttl_deletion.__name__ == "schedule_ttl_deletion"  # type: ignore[attr-defined]
    import inspect

    assert inspect.iscoroutinefunction(training.schedule_ttl_deletion)


def test_job_gauges_from_status() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gauges = observe.JobGauges(lambda: provider.get_meter("t"))
    gauges.record("ml", "job-a", {"kind": "x"})  # nothing to report yet: no instruments
    assert gauges._instruments is None
    status = {
        "progress": {"step": 25, "totalSteps": 100, "tokensPerSecond": 1234.5},
        "rebalance": {"epoch": 3, "utilization": 0.8},
    }
    gauges.record("ml", "job-a", status)
    gauges.record("ml", "job-b", {"progress": {"step": 0, "totalSteps": 10}})
    data = reader.get_metrics_data()
    assert data is not None
    got = {
        (m.name, m.unit, (p.attributes or {})["moeops.resource.name"]): p.value
        for m in data.resource_metrics[0].scope_metrics[0].metrics
        for p in cast("Sequence[NumberDataPoint]", m.data.data_points)
    }
    assert got == {
        ("moeops.job.progress", "1", "job-a"): 0.25,
        ("moeops.job.progress", "1", "job-b"): 0.0,
        ("moeops.job.tokens_per_second", "{token}/s", "job-a"): 1234.5,
        ("moeops.job.utilization", "1", "job-a"): 0.8,
        ("moeops.job.plan_epoch", "{epoch}", "job-a"): 3,
    }
    gauges.forget("ml", "job-a")
    data = reader.get_metrics_data()
    assert data is not None
    names = {(p.attributes or {})["moeops.resource.name"] for m in data.resource_metrics[0].scope_metrics[0].metrics
             for p in m.data.data_points}  # fmt: skip
    assert names == {"job-b"}


def test_record_status_merges_the_patch_for_training_jobs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(observe.JOBS, "record", lambda ns, name, status: seen.append((ns, name, status)))
    body = {**BODY, "status": {"rebalance": {"epoch": 1}}}
    observe.record_status(body, {"progress": {"step": 1, "totalSteps": 2}})
    observe.record_status({**body, "kind": "InferenceService"}, {})
    assert seen == [("ml", "job-a", {"rebalance": {"epoch": 1}, "progress": {"step": 1, "totalSteps": 2}})]
