"""The Kubernetes edge: the only module of the operator that talks to the API server.

Blocking calls through the official client (kopf runs sync handlers in its thread pool). Responses are read
as plain JSON dicts (`_preload_content=False`): the pure layers work on dicts, and skipping the client's model
deserialisation is several times cheaper per call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import kubernetes
from kubernetes.client.exceptions import ApiException

from moeops.api import GROUP
from moeops.api.v1alpha1.common import VERSION

from .children import Child
from .drift import controlled_by, drift_patch
from .naming import FIELD_MANAGER, OPERATOR_NAME

logger = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """An API call failed. `transient` says whether retrying can help (timeouts, 429, 5xx, conflicts)."""

    def __init__(self, message: str, *, status: int | None, transient: bool) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class NotOwned(ApiError):
    """A child's name is taken by an object some other controller (or a user) owns: we never adopt it."""


class ChildRefused(ApiError):
    """The API server refused a child: invalid (400 BadRequest, 422 Invalid) or forbidden (403: an admission policy,
    a quota, the operator's RBAC). Retrying the same object is refused again, so only a change of the spec (or of
    the cluster) can help. The message is the API server's."""


REFUSED = (400, 403, 422)


def _error(exc: ApiException, what: str) -> ApiError:
    status = exc.status
    transient = status is None or status in (409, 429) or status >= 500
    detail = exc.reason
    with contextlib.suppress(ValueError, AttributeError):
        detail = json.loads(exc.body or "{}").get("message") or detail
    if status in REFUSED:
        return ChildRefused(f"{what}: {detail}", status=status, transient=False)
    return ApiError(f"{what}: {status} {detail}", status=status, transient=transient)


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))


@dataclass(frozen=True)
class _Kind:
    """The typed client methods of one built-in kind."""

    api: Callable[[kubernetes.client.ApiClient], Any]
    suffix: str


_KINDS: dict[tuple[str, str], _Kind] = {
    ("v1", "ConfigMap"): _Kind(kubernetes.client.CoreV1Api, "namespaced_config_map"),
    ("v1", "Service"): _Kind(kubernetes.client.CoreV1Api, "namespaced_service"),
    ("v1", "PersistentVolumeClaim"): _Kind(kubernetes.client.CoreV1Api, "namespaced_persistent_volume_claim"),
    ("batch/v1", "Job"): _Kind(kubernetes.client.BatchV1Api, "namespaced_job"),
    ("apps/v1", "Deployment"): _Kind(kubernetes.client.AppsV1Api, "namespaced_deployment"),
    ("policy/v1", "PodDisruptionBudget"): _Kind(kubernetes.client.PolicyV1Api, "namespaced_pod_disruption_budget"),
}

EnsureOutcome = Literal["created", "patched", "unchanged"]


class Kube:
    """Thin, typed-by-convention access to the objects the operator reads and writes."""

    def __init__(self, api_client: kubernetes.client.ApiClient, instance: str | None = None) -> None:
        self._client = api_client
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._instance = instance or socket.gethostname()  # the pod's name in a cluster

    def _method(self, api_version: str, kind: str, verb: str) -> Callable[..., Any]:
        spec = _KINDS[(api_version, kind)]
        return getattr(spec.api(self._client), f"{verb}_{spec.suffix}")  # type: ignore[no-any-return]

    # Built-in children -------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self._method(api_version, kind, "read")(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(exc, f"read {kind} {namespace}/{name}") from exc

    def _create(self, child: Child) -> dict[str, Any] | None:
        """The created object, or None if one of that name exists already."""
        try:
            create = self._method(child.api_version, child.kind, "create")
            return _json(create(child.namespace, child.body, field_manager=FIELD_MANAGER, _preload_content=False))
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise _error(exc, f"create {child.kind} {child.namespace}/{child.name}") from exc

    def ensure(self, child: Child, owner_uid: str, *, likely_new: bool = False) -> tuple[EnsureOutcome, dict[str, Any]]:
        """Create the child, or patch its managed fields back if they drifted. Idempotent.

        `likely_new` (the owner was never reconciled) tries the create first: one call instead of two for
        the common case of a new resource; a 409 falls back to read-and-patch.
        """
        live = None if likely_new else self.get(child.api_version, child.kind, child.namespace, child.name)
        if live is None:
            created = self._create(child)
            if created is not None:
                return "created", created
            # It exists: an earlier run of ours created it (or someone else did; checked below).
            live = self.get(child.api_version, child.kind, child.namespace, child.name)
            if live is None:
                raise ApiError(f"{child.kind} {child.name} vanished during create", status=409, transient=True)
        if not controlled_by(live, owner_uid):
            raise NotOwned(
                f"{child.kind} {child.namespace}/{child.name} exists and is not controlled by this resource",
                status=409,
                transient=False,
            )
        patch = drift_patch(child.managed, live)
        if not patch:
            return "unchanged", live
        try:
            patcher = self._method(child.api_version, child.kind, "patch")
            patched = patcher(
                child.name,
                child.namespace,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as exc:
            raise _error(exc, f"patch {child.kind} {child.namespace}/{child.name}") from exc
        return "patched", _json(patched)

    def delete_owned(self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete the child `name` if it exists and `owner_uid` controls it (never another's object of that name):
        whether there was one to delete."""
        live = self.get(api_version, kind, namespace, name)
        if live is None or not controlled_by(live, owner_uid):
            return False
        self.delete_foreground(api_version, kind, namespace, name, live["metadata"]["uid"])
        return True

    def delete_foreground(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete one exact object (uid precondition) with Foreground propagation: its dependents (a Job's
        pods) are gone before it is, so a successor of the same name never meets them."""
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Foreground"}
        try:
            self._method(api_version, kind, "delete")(name, namespace, body=body, _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a successor holds the name
                raise _error(exc, f"delete {kind} {namespace}/{name}") from exc

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        core = kubernetes.client.CoreV1Api(self._client)
        try:
            response = core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        except ApiException as exc:
            raise _error(exc, f"list pods in {namespace} ({selector})") from exc
        return list(_json(response)["items"])

    def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """The core/v1 Events about one object (e.g. a Job's FailedCreate)."""
        core = kubernetes.client.CoreV1Api(self._client)
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        try:
            response = core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
        except ApiException as exc:
            raise _error(exc, f"list events of {kind} {namespace}/{name}") from exc
        return list(_json(response)["items"])

    # Our custom resources ----------------------------------------------------------------------------

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(exc, f"read {plural} {namespace}/{name}") from exc
        return _json(response)

    def patch_custom_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> None:
        """Merge-patch `.status`, only if the object is still at `resource_version` (else a 409 ApiError):
        two writers computing from the same old status must not both win (and both post its events)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile: nothing left to report on.
            raise _error(exc, f"patch status of {plural} {namespace}/{name}") from exc

    def delete_custom(self, plural: str, namespace: str, name: str, uid: str) -> None:
        """Delete one exact object (the uid precondition spares a same-named successor)."""
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body=body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise _error(exc, f"delete {plural} {namespace}/{name}") from exc

    def get_peering(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """kopf's peering object (ClusterKopfPeering, or KopfPeering in `namespace`), or None."""
        try:
            if namespace is None:
                response = self._custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", name, _preload_content=False
                )
            else:
                response = self._custom.get_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", name, _preload_content=False
                )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(exc, f"read peering {name}") from exc
        return _json(response)

    # Events -------------------------------------------------------------------------------------------

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str, *, key: str = "") -> None:
        """A core/v1 Event on `involved` (apiVersion, kind, metadata), from the operator (`kubectl describe` shows
        `moeops-operator` as its source). Best effort: a failure is logged, never raised (the status says it).

        `key` names the event (`<object>.<key>`): posting the same key again is a no-op (the API server answers 409),
        so an event can be posted before the status write it goes with and posted again after a crash in between."""
        meta = involved["metadata"]
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ref = {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
               "namespace": meta["namespace"], "uid": meta.get("uid")}  # fmt: skip
        body = {
            "metadata": {"name": f"{meta['name']}.{key or uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": ref,
            "type": type_,
            "reason": reason,
            "message": message[:1024],  # the API server refuses longer event messages
            "source": {"component": OPERATOR_NAME},
            "reportingComponent": OPERATOR_NAME,
            "reportingInstance": self._instance,
            "firstTimestamp": at,
            "lastTimestamp": at,
            "action": "Reconcile",
            "count": 1,
        }
        try:
            core = kubernetes.client.CoreV1Api(self._client)
            core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409 and key:
                return  # posted already: by this transition's earlier try, or by a writer that raced us to it
            logger.warning("event %s on %s %s/%s not posted: %s", reason, involved["kind"], meta["namespace"],
                           meta["name"], _error(exc, "post event"))  # fmt: skip
