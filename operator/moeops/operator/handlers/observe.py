"""The operator's OpenTelemetry: a span per handler call, and the training jobs' figures as gauges.

Spans. `@traced()` (under the kopf decorators, above `api_errors_to_kopf` so that it sees kopf's errors) wraps a sync
or async handler in a span `reconcile <Kind>` with the attributes

    k8s.namespace.name, moeops.resource.kind, moeops.resource.name   the custom resource handled
    moeops.handler                                                    the handler function's name
    moeops.outcome                                                    ok | temporary_error | permanent_error | error

and status ERROR (with the exception recorded) when the handler raised. Handlers of child events (the worker Job,
the server Deployment) name their owner through the child's label (`owner_label`).

Metrics. `JOBS` keeps each MoETrainingJob's latest figures, recorded where the operator writes its status
(`common.write_status`, the rebalance timer): nothing is read for them, and observable gauges report the values
when the SDK's reader collects (attributes k8s.namespace.name, moeops.resource.name):

    moeops.job.progress            1          completed steps / total steps
    moeops.job.tokens_per_second   {token}/s  throughput over all ranks (.status.progress.tokensPerSecond)
    moeops.job.utilization         1          the rebalancer's measured utilization (.status.rebalance)
    moeops.job.plan_epoch          {epoch}    the newest rebalancing plan's epoch (.status.rebalance)

With telemetry off (no OTLP endpoint; `moeops.telemetry`) the spans are the API's no-ops and no reader calls back.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import kopf
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Span, StatusCode

from moeops import telemetry
from moeops.api.v1alpha1 import trainingjob

F = TypeVar("F", bound=Callable[..., Any])

NAMESPACE = "k8s.namespace.name"
KIND = "moeops.resource.kind"
NAME = "moeops.resource.name"
HANDLER = "moeops.handler"
OUTCOME = "moeops.outcome"
TRACER_NAME = "moeops.operator"


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, kopf.TemporaryError):
        return "temporary_error"
    if isinstance(exc, kopf.PermanentError):
        return "permanent_error"
    return "error"


def resource_of(kwargs: Mapping[str, Any], kind: str | None, owner_label: str | None) -> tuple[str, str, str]:
    """(kind, namespace, name) of the custom resource a handler call is about, from kopf's keyword arguments."""
    body = kwargs.get("body") or {}
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace") or kwargs.get("namespace") or ""
    if owner_label is not None:
        name = (meta.get("labels") or {}).get(owner_label) or ""
    else:
        name = meta.get("name") or kwargs.get("name") or ""
    return kind or body.get("kind") or "", str(namespace), str(name)


def _start(fn: Callable[..., Any], kwargs: Mapping[str, Any], kind: str | None, owner_label: str | None) -> Any:
    resolved, namespace, name = resource_of(kwargs, kind, owner_label)
    attributes = {NAMESPACE: namespace, KIND: resolved, NAME: name, HANDLER: fn.__name__}
    return telemetry.tracer(TRACER_NAME).start_as_current_span(
        f"reconcile {resolved}", attributes=attributes, record_exception=False, set_status_on_exception=False
    )


def _finish(span: Span, exc: BaseException | None) -> None:
    span.set_attribute(OUTCOME, outcome_of(exc))
    if exc is not None:
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")


def traced(kind: str | None = None, *, owner_label: str | None = None) -> Callable[[F], F]:
    """Wrap a kopf handler (sync or async) in a span; `kind` defaults to the body's."""

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _start(fn, kwargs, kind, owner_label) as span:
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        _finish(span, exc)
                        raise
                    _finish(span, None)
                    return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _start(fn, kwargs, kind, owner_label) as span:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    _finish(span, exc)
                    raise
                _finish(span, None)
                return result

        return cast(F, wrapper)

    return decorate


GAUGES = {
    # name: (unit, description)
    "moeops.job.progress": ("1", "Completed steps over total steps of a MoETrainingJob."),
    "moeops.job.tokens_per_second": ("{token}/s", "Training throughput over all ranks of a MoETrainingJob."),
    "moeops.job.utilization": ("1", "The ranks' compute time over their step time, as the rebalancer measured it."),
    "moeops.job.plan_epoch": ("{epoch}", "Epoch of the newest expert-placement plan of a MoETrainingJob."),
}


def figures_of(status: Mapping[str, Any]) -> dict[str, float]:
    """The gauges' values in a MoETrainingJob's status (wire names); absent figures are left out."""
    figures: dict[str, float] = {}
    progress = status.get("progress") or {}
    rebalance = status.get("rebalance") or {}
    total = progress.get("totalSteps")
    if total and progress.get("step") is not None:
        figures["moeops.job.progress"] = min(1.0, float(progress["step"]) / float(total))
    if progress.get("tokensPerSecond") is not None:
        figures["moeops.job.tokens_per_second"] = float(progress["tokensPerSecond"])
    if rebalance.get("utilization") is not None:
        figures["moeops.job.utilization"] = float(rebalance["utilization"])
    if rebalance.get("epoch") is not None:
        figures["moeops.job.plan_epoch"] = float(rebalance["epoch"])
    return figures


class JobGauges:
    """The latest figures of each training job, reported by observable gauges (made on the first record)."""

    def __init__(self, meter: Callable[[], Meter] = lambda: telemetry.meter(TRACER_NAME)) -> None:
        self._meter = meter
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], dict[str, float]] = {}
        self._instruments: list[Any] | None = None

    def record(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        figures = figures_of(status)
        if not figures:
            return
        with self._lock:
            self._values.setdefault((namespace, name), {}).update(figures)
            if self._instruments is None:
                meter = self._meter()
                self._instruments = [
                    meter.create_observable_gauge(gauge, [self._callback(gauge)], unit=unit, description=text)
                    for gauge, (unit, text) in GAUGES.items()
                ]

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._values.pop((namespace, name), None)

    def _callback(self, gauge: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                points = [(key, figures[gauge]) for key, figures in self._values.items() if gauge in figures]
            return [Observation(value, {NAMESPACE: ns, NAME: name}) for (ns, name), value in points]

        return observe


JOBS = JobGauges()


def record_status(body: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
    """Record a training job's figures as its status will be after `patch` (a no-op for other kinds)."""
    if body.get("kind") != trainingjob.KIND:
        return
    meta = body.get("metadata") or {}
    status = {**(body.get("status") or {}), **patch}
    JOBS.record(str(meta.get("namespace") or ""), str(meta.get("name") or ""), status)
