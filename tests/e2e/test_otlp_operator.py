"""The operator's OpenTelemetry on a real control plane: its reconcile spans and the training jobs' gauges reach the
OTLP/HTTP receiver the e2e fixtures start (conftest: `otlp_receiver`, the operator's OTEL_* variables)."""

from __future__ import annotations

from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job

from moeops.telemetry import package_version
from otlp_receiver import OtlpReceiver, ReceivedSpan


def spans_of(receiver: OtlpReceiver, namespace: str, name: str, handler: str) -> list[ReceivedSpan]:
    return [
        s
        for s in receiver.spans()
        if s.attributes.get("k8s.namespace.name") == namespace
        and s.attributes.get("moeops.resource.name") == name
        and s.attributes.get("moeops.handler") == handler
    ]


def test_reconcile_spans_and_job_gauges(
    cluster: Cluster, operator: OperatorProcess, otlp_receiver: OtlpReceiver, namespace: str
) -> None:
    cluster.kubectl.apply(training_job("traced", namespace))
    wait_for("the worker Job", lambda: cluster.read("Job", namespace, "traced"))

    reconciles = otlp_receiver.wait(
        "a span of the training job's reconcile",
        lambda: spans_of(otlp_receiver, namespace, "traced", "reconcile_training_job"),
    )
    span = reconciles[0]
    assert span.name == "reconcile MoETrainingJob"
    assert span.scope == "moeops.operator"
    assert span.attributes == {
        "k8s.namespace.name": namespace,
        "moeops.resource.kind": "MoETrainingJob",
        "moeops.resource.name": "traced",
        "moeops.handler": "reconcile_training_job",
        "moeops.outcome": "ok",
    }
    assert span.span.status.code != 2  # not STATUS_CODE_ERROR
    assert span.resource["service.name"] == "moeops-operator"
    assert span.resource["service.version"] == package_version()

    # The worker Job's events are spans of its owner (named through the Job's label).
    followed = otlp_receiver.wait(
        "a span of the worker Job's events", lambda: spans_of(otlp_receiver, namespace, "traced", "worker_job_changed")
    )
    assert followed[0].name == "reconcile MoETrainingJob"
    assert followed[0].attributes["moeops.resource.kind"] == "MoETrainingJob"

    def progress() -> list[tuple[dict[str, object], object]] | None:
        metric = otlp_receiver.latest("moeops.job.progress")
        if metric is None:
            return None
        mine = [(a, v) for a, v in metric.points() if a.get("moeops.resource.name") == "traced"]
        return mine or None

    ((attributes, value),) = otlp_receiver.wait("the job's progress gauge", progress)
    assert attributes == {"k8s.namespace.name": namespace, "moeops.resource.name": "traced"}
    assert value == 0.0  # no step done yet: the fake kubelet runs no trainer
    metric = otlp_receiver.latest("moeops.job.progress")
    assert metric is not None and (metric.unit, metric.kind) == ("1", "gauge")
    assert metric.resource["service.name"] == "moeops-operator"
