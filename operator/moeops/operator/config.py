"""Operator settings: one typed place for defaults, read from the environment by the entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moeops.api import env

DEFAULT_RUNTIME_IMAGE = "ghcr.io/moeops/moeops-runtime:0.1.0"  # images/runtime.Dockerfile; the chart sets its own


@dataclass(frozen=True)
class OperatorConfig:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    """Image of workers and model servers whose spec names none."""
    image_pull_policy: str = "IfNotPresent"
    rendezvous_port: int = 29500
    """Where rank 0 of every job listens for its peers (torch's MASTER_PORT). Another port lets two clusters
    whose pods share one host's network (process nodes on one machine) run jobs side by side."""
    http_port_name: str = "http"
    worker_grace_seconds: int = 120
    """Time a preempted worker has to write its SIGTERM checkpoint."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""
    max_workers: int = 16
    """Threads for blocking API calls (kopf's executor)."""
    nats_url: str = ""
    """The bus; set on every worker (progress) and server (load) pod (empty: no bus, no progress beyond step 0, no
    rebalancing, no autoscaling)."""
    nats_token_secret: str = ""
    """A Secret in the job's namespace whose `token` key authenticates the workers to NATS (empty: none)."""
    carbon_intensity_series: str = ""
    """A grid-intensity time series (CSV, re-read when it changes) asked before the static table (empty: none)."""
    carbon_gate_interval_s: float = 30.0
    """How often the carbon gate looks at each job with `spec.carbon.maxIntensity`."""
    autoscale_interval_s: float = 5.0
    """How often the autoscaler reads each InferenceService's load (only with a bus: `nats_url`)."""
    progress_interval_s: float = 5.0
    """How often each running MoETrainingJob's progress is read into its status (only with a bus: `nats_url`)."""
    rebalance_status_interval_s: float = 15.0
    """How often the rebalancer's last report for each job is copied into its status (only with a bus)."""
    carbon_status_interval_s: float = 30.0
    """How often each workload's carbon totals are read into its status (only with a bus)."""
    workers_interval_s: float = 10.0
    """How often a job that is not Running yet has its workers and checkpoint claim looked at (a pod list each)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorConfig:
        namespaces = tuple(ns for ns in environ.get(env.OPERATOR_NAMESPACES, "").split(",") if ns.strip())
        return cls(
            runtime_image=environ.get(env.OPERATOR_RUNTIME_IMAGE, DEFAULT_RUNTIME_IMAGE),
            image_pull_policy=environ.get(env.OPERATOR_IMAGE_PULL_POLICY, "IfNotPresent"),
            namespaces=tuple(ns.strip() for ns in namespaces),
            max_workers=int(environ.get(env.OPERATOR_MAX_WORKERS, "16")),
            rendezvous_port=int(environ.get(env.OPERATOR_RENDEZVOUS_PORT, str(cls.rendezvous_port))),
            nats_url=environ.get(env.NATS_URL, ""),
            nats_token_secret=environ.get(env.OPERATOR_NATS_TOKEN_SECRET, ""),
            carbon_intensity_series=environ.get(env.OPERATOR_CARBON_INTENSITY_SERIES, ""),
            carbon_gate_interval_s=float(environ.get(env.OPERATOR_CARBON_GATE_INTERVAL, "30")),
            autoscale_interval_s=float(environ.get(env.OPERATOR_AUTOSCALE_INTERVAL, "5")),
            progress_interval_s=float(environ.get(env.OPERATOR_PROGRESS_INTERVAL, "5")),
            rebalance_status_interval_s=float(environ.get(env.OPERATOR_REBALANCE_STATUS_INTERVAL, "15")),
            carbon_status_interval_s=float(environ.get(env.OPERATOR_CARBON_STATUS_INTERVAL, "30")),
            workers_interval_s=float(environ.get(env.OPERATOR_WORKERS_INTERVAL, "10")),
        )
