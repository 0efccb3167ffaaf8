"""Lifecycle and scheduling of a MoETrainingJob (spec.runPolicy, spec.scheduling): Kubeflow-style run policy and
the queueing and gang-scheduling hints. Apart from trainingjob.py to keep that module readable."""

from __future__ import annotations

from pydantic import Field

from .common import DNS_SUBDOMAIN_PATTERN, KubeModel


class RunPolicy(KubeModel):
    """Lifecycle policy, as in Kubeflow's runPolicy."""

    suspend: bool = Field(default=False, description="Suspend the job: workers stop, state is kept.")
    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=10000,
        description="Restarts of the whole group of workers after a worker failed, before the job is Failed"
        " (a disruption such as preemption or eviction restarts it without counting).",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has been running longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job (and its children) this long after it finished."
    )


class SchedulingSpec(KubeModel):
    """Queueing and gang-scheduling hints."""

    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Kueue LocalQueue; sets the `kueue.x-k8s.io/queue-name` label on the worker Job.",
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="PriorityClass of the workers.",
    )
    scheduler_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Scheduler of the worker pods, e.g. a gang scheduler.",
    )
    gang: bool = Field(
        default=False,
        description="Label the workers as one pod group (`scheduling.x-k8s.io/pod-group`) for a gang scheduler.",
    )
