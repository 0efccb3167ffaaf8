"""The `typed_spec` handler decorator: the handler gets the spec as its model; a refused spec goes to `on_invalid`."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from moeops.api.v1alpha1.inferenceservice import InferenceServiceSpec
from moeops.operator.handlers.typed import typed_spec

VALID = {"model": {"trainingJobRef": {"name": "job"}}}
INVALID = {"model": {"trainingJobRef": {"name": "job"}}, "replicas": {"min": -1}}


def body_with(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "s", "namespace": "ml"}, "spec": spec}


def test_the_handler_gets_the_model_and_the_other_arguments() -> None:
    seen: list[Any] = []

    @typed_spec(InferenceServiceSpec)
    def handler(spec: InferenceServiceSpec, memo: dict[str, Any], **_: Any) -> str:
        seen.append((spec, memo))
        return "done"

    assert handler(body=body_with(VALID), spec=VALID, memo={"m": 1}, retry=0) == "done"
    spec, memo = seen[0]
    assert isinstance(spec, InferenceServiceSpec)
    assert spec.model.training_job_ref is not None and spec.model.training_job_ref.name == "job"
    assert memo == {"m": 1}


def test_a_refused_spec_goes_to_on_invalid_with_the_field_named() -> None:
    reports: list[dict[str, Any]] = []
    calls: list[Any] = []

    @typed_spec(InferenceServiceSpec, on_invalid=lambda **kwargs: reports.append(kwargs))
    def handler(**kwargs: Any) -> None:
        calls.append(kwargs)

    assert handler(body=body_with(INVALID), spec=INVALID, memo={}) is None
    assert calls == []
    assert reports[0]["message"].startswith("spec.replicas.min: ")
    assert reports[0]["memo"] == {}


def test_without_on_invalid_a_refused_spec_is_skipped() -> None:
    @typed_spec(InferenceServiceSpec)
    def handler(**_: Any) -> str:
        raise AssertionError("not called")

    assert handler(body=body_with(INVALID), spec=INVALID) is None


def test_async_handlers_stay_async_and_keep_their_names() -> None:
    @typed_spec(InferenceServiceSpec)
    async def autoscale(spec: InferenceServiceSpec, **_: Any) -> int:
        return spec.replicas.max

    assert inspect.iscoroutinefunction(autoscale)
    assert autoscale.__name__ == "autoscale"
    assert asyncio.run(autoscale(body=body_with(VALID), spec=VALID)) >= 1
    assert asyncio.run(autoscale(body=body_with(INVALID), spec=INVALID)) is None
