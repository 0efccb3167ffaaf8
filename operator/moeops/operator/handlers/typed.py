"""Typed handler inputs: the body's spec validated into its pydantic model once, before the handler runs.

As azimuth-capi-operator's `model_handler`: a handler decorated with `@typed_spec(Model, on_invalid=...)` receives
`spec` as a `Model` instance in place of kopf's raw `kopf.Spec`. A spec the model refuses never reaches the handler:
`on_invalid` is called instead (with kopf's keyword arguments and `message`, the error in API terms) to report it the
way that resource reports an invalid spec; without it, the call does nothing (another handler reports it).

Under `@traced()` and `@api_errors_to_kopf`, so that a report's API errors become kopf retries and show in the span.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .common import validation_message

M = TypeVar("M", bound=BaseModel)
Handler = Callable[..., Any]
InvalidFn = Callable[..., None]
"""Called as `on_invalid(message=..., **kopf_kwargs)` when the spec does not validate."""


def spec_of(model: type[M], body: Mapping[str, Any]) -> M:
    """The spec of `body` (a custom resource as read) as `model`; raises pydantic's ValidationError."""
    return model.model_validate(body.get("spec") or {})


def typed_spec(model: type[M], *, on_invalid: InvalidFn | None = None) -> Callable[[Handler], Handler]:
    """Pass the handler `spec` validated into `model`; report a refused spec with `on_invalid` (sync or async)."""

    def validated(kwargs: dict[str, Any]) -> bool:
        try:
            kwargs["spec"] = spec_of(model, kwargs["body"])
        except ValidationError as exc:
            if on_invalid is not None:
                on_invalid(**{**kwargs, "message": validation_message(exc)})
            return False
        return True

    def decorate(fn: Handler) -> Handler:
        # The wrapper takes kopf's keyword arguments (`spec` a raw kopf.Spec); `fn` gets `spec` as a `model`.
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(**kwargs: Any) -> Any:
                return await fn(**kwargs) if validated(kwargs) else None

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            return fn(**kwargs) if validated(kwargs) else None

        return wrapper

    return decorate
