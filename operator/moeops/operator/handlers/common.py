"""Plumbing shared by the handlers: the memo, error mapping, events and status writes."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import kopf
from pydantic import ValidationError

from ..config import OperatorConfig
from ..drift import is_subset
from ..kube import ApiError, Kube
from ..naming import Owner
from ..status import Event, StatusUpdate
from .observe import record_status

P = ParamSpec("P")
R = TypeVar("R")
StatusFn = Callable[[Mapping[str, Any]], "StatusUpdate | None"]
"""Computes a status update from the owner as read (None: nothing to write)."""
RETRY_DELAY_SECONDS = 10
CONFLICT_RETRIES = 5


def kube_of(memo: Any) -> Kube:
    return memo["kube"]  # type: ignore[no-any-return]


def config_of(memo: Any) -> OperatorConfig:
    return memo["config"]  # type: ignore[no-any-return]


def now() -> datetime:
    return datetime.now(UTC)


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(
        api_version=body["apiVersion"],
        kind=body["kind"],
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=int(meta.get("generation") or 0),
    )


def validation_message(error: ValidationError) -> str:
    """A pydantic error in API terms: `spec.workers.replicas: Input should be ...`."""
    parts = []
    for err in error.errors():
        path = ".".join(str(p) for p in ("spec", *err["loc"]))
        parts.append(f"{path}: {err['msg']}")
    return "; ".join(parts)


EVENT_KEYED_FIELDS = ("conditions", "state", "restarts")
"""The status fields whose value before a transition names its events (what the events are about)."""


def event_key(body: Mapping[str, Any], event: Event) -> str:
    """The same for every computation of one transition from one status (a retry after a crash, a racing writer),
    different for the same event after the status moved on (a problem that clears and comes back)."""
    status = body.get("status") or {}
    before = [body["metadata"].get("uid"), [status.get(k) for k in EVENT_KEYED_FIELDS], event.type, event.reason]
    material = json.dumps([*before, event.message], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def post_events(kube: Kube, body: Mapping[str, Any], update: StatusUpdate) -> None:
    """The update's events, posted by the operator itself (not through kopf: its events say `kopf` as their source,
    and kopf can post only from inside a handler, not from the status loop), each named by `event_key`."""
    for event in update.events:
        kube.post_event(dict(body), event.type, event.reason, event.message, key=event_key(body, event))


def write_status(kube: Kube, plural: str, body: Mapping[str, Any], update: StatusUpdate) -> None:
    """Post the transitions' events, then patch the status subresource (unless it already says the same).

    Events first: a crash between the two leaves the status as it was, so the transition is computed again and
    its events, named by `event_key`, are not posted twice (the other order lost them: the status said it all).
    The write is conditional on the resourceVersion `body` was read at, so of two handlers racing on the same
    transition only one writes it; the other gets a 409 and recomputes (their events, the same keys, post once).
    """
    record_status(body, update.patch)
    if is_subset(update.patch, body.get("status") or {}):
        return
    meta = body["metadata"]
    post_events(kube, body, update)
    kube.patch_custom_status(plural, meta["namespace"], meta["name"], update.patch, meta["resourceVersion"])


def with_fresh_owner(
    kube: Kube,
    plural: str,
    namespace: str,
    name: str,
    compute: StatusFn,
    cached: Mapping[str, Any] | None = None,
) -> None:
    """Compute the owner's status update and write it; on a write conflict re-read and try again.

    `cached` (the owner as kopf's index last saw it) saves the read in the common case; if it was stale
    the conditional write fails with a 409 and the next attempt reads the owner afresh.
    """
    for attempt in range(CONFLICT_RETRIES):
        owner = cached if attempt == 0 and cached is not None else kube.get_custom(plural, namespace, name)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return
        update = compute(owner)
        if update is None:
            return
        try:
            write_status(kube, plural, owner, update)
            return
        except ApiError as exc:
            if exc.status != 409:
                raise
    raise ApiError(f"{plural} {namespace}/{name}: status kept changing under us", status=409, transient=True)


def retry_transient(
    fn: Callable[[], R], *, attempts: int = 5, first_delay_s: float = 1.0, sleep: Callable[[float], None] = time.sleep
) -> R:
    """Call `fn`, retrying transient API errors with doubling delays (1, 2, 4, 8 s by default).

    For event handlers, which kopf never retries: a follow-up they miss (a group restart's delete or the next
    attempt's Job) may have no later event to come back with. `fn` must be idempotent.
    """
    delay = first_delay_s
    for attempt in range(attempts):
        try:
            return fn()
        except ApiError as exc:
            if not exc.transient or attempt == attempts - 1:
                raise
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # the last attempt returns or raises


def api_errors_to_kopf(fn: Callable[P, R]) -> Callable[P, R]:
    """Transient API failures become kopf retries with a delay; permanent ones stop retrying."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            if exc.transient:
                delay = 1 if exc.status == 409 else RETRY_DELAY_SECONDS  # a conflict clears at once
                raise kopf.TemporaryError(str(exc), delay=delay) from exc
            raise kopf.PermanentError(str(exc)) from exc

    return wrapper
