"""A crash between a status transition's event and its status write loses neither and doubles neither (real
control plane; the crash is injected: the operator's Kube dies at its second write).

Before, the status was patched first: a crash before the event left a status that already said the transition, so
the operator, back, computed nothing new and the event was never posted. Now the event is posted first, named by the
transition (`common.event_key`): the status still says the old thing, the transition is computed again, and its
event, posted again under the same name, is refused as a duplicate by the API server.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import Cluster, wait_for
from manifests import training_job

from moeops.operator.handlers.common import now, write_status
from moeops.operator.kube import Kube
from moeops.operator.status.rejection import rejection_status

PLURAL = "moetrainingjobs"
NAME = "crashy"
MESSAGE = "create Job: refused by the cluster's policy"


class Crash(BaseException):
    """The operator's process ending (kill -9) at this point: nothing after it runs."""


class CrashingKube:
    """A real Kube whose process 'dies' at its `at`-th write (an event or a status patch), before sending it."""

    def __init__(self, kube: Kube, at: int) -> None:
        self._kube, self._at, self.writes = kube, at, 0

    def _write(self) -> None:
        self.writes += 1
        if self.writes == self._at:
            raise Crash

    def post_event(self, *args: Any, **kwargs: Any) -> None:
        self._write()
        self._kube.post_event(*args, **kwargs)

    def patch_custom_status(self, *args: Any, **kwargs: Any) -> None:
        self._write()
        self._kube.patch_custom_status(*args, **kwargs)


def transition(cluster: Cluster, namespace: str, kube: Any) -> None:
    """What a handler does: read the job, compute the ChildRejected transition from its status, write it."""
    body = cluster.get(PLURAL, namespace, NAME)
    assert body
    update = rejection_status(body.get("status") or {}, "ChildRejected", MESSAGE, generation=1, now=now())
    write_status(kube, PLURAL, body, update)


def test_a_crash_between_the_event_and_the_status_write_posts_the_event_once(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl.apply(training_job(NAME, namespace))  # no operator runs: only this test writes its status
    wait_for("the job", lambda: cluster.get(PLURAL, namespace, NAME))
    kube = Kube(cluster.api_client)
    with pytest.raises(Crash):
        transition(cluster, namespace, CrashingKube(kube, at=2))
    transition(cluster, namespace, kube)  # the operator back: the same computation on what the API server holds

    condition = cluster.condition(PLURAL, namespace, NAME, "ChildRejected")
    assert condition and condition["status"] == "True" and condition["message"] == MESSAGE
    events = [e for e in cluster.events(namespace, NAME) if e["reason"] == "ChildRejected"]
    assert len(events) == 1 and events[0]["message"] == MESSAGE

    transition(cluster, namespace, kube)  # computed again from the new status: nothing new, no second event
    assert len([e for e in cluster.events(namespace, NAME) if e["reason"] == "ChildRejected"]) == 1
