"""The operator's Kubernetes edge under faults a real API server won't produce on demand (kmock, a mock
API server): injected 500s, create races (409 AlreadyExists) and objects owned by someone else."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock as km
import kopf
import kubernetes
import pytest

from moeops.operator.children import Child
from moeops.operator.handlers.common import api_errors_to_kopf, retry_transient
from moeops.operator.kube import ApiError, Kube, NotOwned

pytestmark = pytest.mark.kmock(cls=km.RawHandler)  # plain HTTP mock: every answer is scripted below

JOBS = "/apis/batch/v1/namespaces/ns/jobs"
OWNER = {
    "uid": "owner-uid",
    "controller": True,
    "apiVersion": "moeops.dev/v1alpha1",
    "kind": "MoETrainingJob",
    "name": "o",
}


def status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "message": message}


def job(owner_uid: str = "owner-uid", suspend: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "ns", "ownerReferences": [{**OWNER, "uid": owner_uid}]},
        "spec": {"suspend": suspend, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }


CHILD = Child(job(), managed={"spec": {"suspend": False}})


def kube_for(server: km.RawHandler) -> Kube:
    configuration = kubernetes.client.Configuration(host=str(server.url).rstrip("/"))
    return Kube(kubernetes.client.ApiClient(configuration))


async def test_an_injected_500_is_transient_and_the_retry_creates(kmock: km.RawHandler) -> None:
    kmock[f"get {JOBS}/j"] << 404 << status(404, "not found")
    kmock[f"post {JOBS}"][:1] << 500 << status(500, "etcdserver: request timed out")
    kmock[f"post {JOBS}"] << 201 << job()
    kube = kube_for(kmock)

    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(kube.ensure, CHILD, "owner-uid")
    assert info.value.transient and info.value.status == 500
    assert "etcdserver: request timed out" in str(info.value)
    outcome, live = await asyncio.to_thread(kube.ensure, CHILD, "owner-uid")
    assert outcome == "created" and live["metadata"]["name"] == "j"


async def test_a_create_race_falls_back_to_patching_the_existing_object(kmock: km.RawHandler) -> None:
    kmock[f"get {JOBS}/j"][:1] << 404 << status(404, "not found")
    kmock[f"post {JOBS}"] << 409 << status(409, 'jobs.batch "j" already exists')
    kmock[f"get {JOBS}/j"] << 200 << job(suspend=True)
    kmock[f"patch {JOBS}/j"] << 200 << job(suspend=False)
    outcome, _ = await asyncio.to_thread(kube_for(kmock).ensure, CHILD, "owner-uid")
    assert outcome == "patched"
    (patch,) = list(kmock["patch"])
    assert patch.data == {"spec": {"suspend": False}}
    assert patch.headers["Content-Type"] == "application/merge-patch+json"


async def test_an_object_owned_by_someone_else_is_never_adopted(kmock: km.RawHandler) -> None:
    kmock[f"get {JOBS}/j"] << 200 << job(owner_uid="somebody-else")
    with pytest.raises(NotOwned):
        await asyncio.to_thread(kube_for(kmock).ensure, CHILD, "owner-uid")
    assert len(kmock["patch"]) == 0


async def test_an_unchanged_object_is_not_written(kmock: km.RawHandler) -> None:
    kmock[f"get {JOBS}/j"] << 200 << job()
    outcome, _ = await asyncio.to_thread(kube_for(kmock).ensure, CHILD, "owner-uid")
    assert outcome == "unchanged" and len(kmock["patch"]) == 0 and len(kmock["post"]) == 0


async def test_a_status_write_conflict_is_a_transient_409(kmock: km.RawHandler) -> None:
    path = "/apis/moeops.dev/v1alpha1/namespaces/ns/moetrainingjobs/o/status"
    kmock[f"patch {path}"] << 409 << status(409, "the object has been modified")
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(
            kube_for(kmock).patch_custom_status, "moetrainingjobs", "ns", "o", {"state": "Running"}, "7"
        )
    assert info.value.status == 409 and info.value.transient
    (request,) = list(kmock["patch"])
    assert request.data["metadata"] == {"resourceVersion": "7"}  # the optimistic-concurrency precondition


def test_transient_errors_become_kopf_retries_and_permanent_ones_stop() -> None:
    @api_errors_to_kopf
    def handler(error: ApiError) -> None:
        raise error

    with pytest.raises(kopf.TemporaryError) as conflict:
        handler(ApiError("conflict", status=409, transient=True))
    assert conflict.value.delay == 1
    with pytest.raises(kopf.TemporaryError) as outage:
        handler(ApiError("down", status=503, transient=True))
    assert outage.value.delay == 10
    with pytest.raises(kopf.PermanentError):
        handler(ApiError("invalid", status=422, transient=False))


async def test_a_group_restart_deletes_the_exact_job_in_the_foreground_and_tolerates_a_successor(
    kmock: km.RawHandler,
) -> None:
    kmock[f"delete {JOBS}/j"][:1] << 200 << job()
    # 409: the uid precondition failed (a successor holds the name); 404: gone already. Neither is an error.
    kmock[f"delete {JOBS}/j"][1:2] << 409 << status(409, "Precondition failed: UID in precondition: old-uid")
    kmock[f"delete {JOBS}/j"][2:3] << 404 << status(404, "not found")
    kmock[f"delete {JOBS}/j"] << 500 << status(500, "etcdserver: leader changed")
    kube = kube_for(kmock)
    for _ in range(3):
        await asyncio.to_thread(kube.delete_foreground, "batch/v1", "Job", "ns", "j", "old-uid")
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(kube.delete_foreground, "batch/v1", "Job", "ns", "j", "old-uid")
    assert info.value.transient
    first = next(iter(kmock["delete"]))
    assert first.data == {"preconditions": {"uid": "old-uid"}, "propagationPolicy": "Foreground"}


async def test_event_handlers_retry_transient_failures_of_their_follow_up_and_stop_on_permanent_ones(
    kmock: km.RawHandler,
) -> None:
    kmock[f"delete {JOBS}/j"][:2] << 503 << status(503, "the server is currently unable to handle the request")
    kmock[f"delete {JOBS}/j"][2:3] << 200 << job()
    kmock[f"delete {JOBS}/j"] << 403 << status(403, "forbidden: cannot delete jobs")
    kube, delays = kube_for(kmock), list[float]()

    def delete() -> None:
        kube.delete_foreground("batch/v1", "Job", "ns", "j", "uid")

    await asyncio.to_thread(retry_transient, delete, sleep=delays.append)
    assert delays == [1.0, 2.0] and len(list(kmock["delete"])) == 3
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(retry_transient, delete, sleep=delays.append)
    assert not info.value.transient and delays == [1.0, 2.0] and len(list(kmock["delete"])) == 4
