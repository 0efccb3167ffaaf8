"""The filter Job's events: each change of a training job's filter Job reconciles its owner again, so the status
follows the filter (Filtering, counts, Failed) and the workers start the moment it completes (data_filter_gate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from moeops.api.v1alpha1.trainingjob import PLURAL

from ..children.data_filter import FILTER_OF_LABEL
from ..drift import controlled_by
from ..kube import ChildRefused, NotOwned
from ..naming import MANAGED_BY, OPERATOR_NAME
from ..status import StatusUpdate, is_finished
from .common import config_of, kube_of, retry_transient, with_fresh_owner
from .observe import traced
from .training import reconcile, rejected

FILTER_JOB_LABELS: Mapping[str, Any] = {MANAGED_BY: OPERATOR_NAME, FILTER_OF_LABEL: kopf.PRESENT}


@kopf.on.event("batch", "v1", "jobs", labels=FILTER_JOB_LABELS)
@traced("MoETrainingJob", owner_label=FILTER_OF_LABEL)
def data_filter_job_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    kube, cfg = kube_of(memo), config_of(memo)
    namespace, name = body.metadata.namespace or "", body.metadata.labels[FILTER_OF_LABEL]

    def compute(owner: Mapping[str, Any]) -> StatusUpdate | None:
        if not controlled_by(body, owner["metadata"]["uid"]) or is_finished(owner.get("status") or {}):
            return None
        try:
            return reconcile(kube, cfg, owner)(owner)
        except ChildRefused as exc:
            return rejected(owner, "ChildRejected", str(exc))(owner)
        except NotOwned as exc:
            return rejected(owner, "ChildNameConflict", str(exc))(owner)

    retry_transient(lambda: with_fresh_owner(kube, PLURAL, namespace, name, compute))
