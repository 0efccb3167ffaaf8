"""Operator start-up: settings fit for production and the shared clients in kopf's memo."""

from __future__ import annotations

import logging
import os
import random
import socket
from typing import Any

import kopf
import kubernetes

from moeops import telemetry
from moeops.api import env
from moeops.bus.connection import ConnectionOptions

from ..config import OperatorConfig
from ..grid_intensity import GridIntensity
from ..kube import Kube
from ..naming import OPERATOR_NAME
from ..reports import ReportReader

PEERING_NAME = "moeops"
KOPF_PREFIX = "kopf.moeops.dev"


def api_client(max_connections: int) -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = max_connections  # one connection per handler thread
    return kubernetes.client.ApiClient(configuration)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    memo["telemetry"] = telemetry.setup("operator")  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    cfg = OperatorConfig.from_env(os.environ)
    memo["config"] = cfg
    memo["kube"] = Kube(api_client(cfg.max_workers))
    memo["ttl_timers"] = {}
    memo["grid_intensity"] = GridIntensity(cfg.carbon_intensity_series)  # the carbon gate's source
    # The rebalancer's reports (plan epoch, utilization), the carbon totals and the jobs' progress reach status only
    # when the operator has a bus; all are read over one connection (a ReportReader is a BusReader).
    memo["reports"] = ReportReader(ConnectionOptions.from_env(name="moeops-operator")) if cfg.nats_url else None
    memo["bus"] = memo["reports"]

    # kopf's state goes in annotations, never in .status (the schema would prune it), under a prefix of its
    # own: kopf ignores every annotation sharing its storage prefix, so with plain `moeops.dev` it would
    # miss user-facing ones such as `moeops.dev/stop`.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = "moeops.dev/finalizer"
    # Events come from our status transitions (posted by Kube.post_event); kopf's own per-handler chatter stays in the
    # logs, and what it still posts (a handler's failure) names the operator as its source too, not `kopf`.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = OPERATOR_NAME
    settings.posting.reporting_instance = socket.gethostname()
    settings.execution.max_workers = cfg.max_workers
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0
    settings.batching.error_delays = (1, 2, 5, 10, 20, 30, 60)
    # Peering (needs a ClusterKopfPeering: deploy/peering.yaml's, or the chart's, one per release and named in
    # MOEOPS_PEERING_NAME): of several replicas only the highest priority one acts, the rest pause. Equal
    # priorities would pause them all, so each process draws a random one; when the active replica's record
    # lapses (`lifetime`), the next one resumes.
    settings.peering.name = os.environ.get(env.OPERATOR_PEERING_NAME) or PEERING_NAME
    settings.peering.priority = random.randint(1, 2**31)
    settings.peering.stealth = False
    settings.peering.lifetime = 60
    settings.peering.mandatory = False


@kopf.on.cleanup()
async def close_bus(memo: kopf.Memo, **_: Any) -> None:
    reader: ReportReader | None = memo.get("reports")
    if reader is not None:
        await reader.close()


@kopf.on.cleanup()
def flush_telemetry(memo: kopf.Memo, **_: Any) -> None:
    """Export the last spans and metrics before the process ends."""
    otel: telemetry.Telemetry | None = memo.get("telemetry")
    if otel is not None:
        otel.shutdown()
