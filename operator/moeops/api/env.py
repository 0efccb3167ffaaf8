"""Every environment variable moeops reads or sets, in one place (the operator sets them on pods,
the runtime and the services read them)."""

from __future__ import annotations

# Operator settings (read by `moeops operator run`).
OPERATOR_RUNTIME_IMAGE = "MOEOPS_RUNTIME_IMAGE"
OPERATOR_IMAGE_PULL_POLICY = "MOEOPS_IMAGE_PULL_POLICY"
OPERATOR_NAMESPACES = "MOEOPS_WATCH_NAMESPACES"
OPERATOR_MAX_WORKERS = "MOEOPS_OPERATOR_MAX_WORKERS"
OPERATOR_NATS_TOKEN_SECRET = "MOEOPS_NATS_TOKEN_SECRET"  # a Secret (key `token`) in each job's namespace
OPERATOR_RENDEZVOUS_PORT = "MOEOPS_RENDEZVOUS_PORT"  # the workers' torch rendezvous port (default 29500)
# Carbon-aware training (spec.carbon.maxIntensity): where the operator reads the grid's intensity, and how often.
OPERATOR_CARBON_INTENSITY_SERIES = "MOEOPS_CARBON_INTENSITY_SERIES"  # a timestamp,region,g_co2e_per_kwh CSV file
OPERATOR_CARBON_GATE_INTERVAL = "MOEOPS_CARBON_GATE_INTERVAL_S"  # seconds between two looks per job (default 30)
# InferenceService autoscaling (needs NATS_URL): seconds between two looks at each service's load (default 5).
OPERATOR_AUTOSCALE_INTERVAL = "MOEOPS_AUTOSCALE_INTERVAL_S"
# Training progress (needs NATS_URL): seconds between two reads of each running job's progress (default 5).
OPERATOR_PROGRESS_INTERVAL = "MOEOPS_PROGRESS_INTERVAL_S"
# The status loop's other reads, in seconds: the rebalancer's reports (default 15), the carbon totals (default 30),
# the workers' and the checkpoint claim's health while a job is not Running yet (default 10).
OPERATOR_REBALANCE_STATUS_INTERVAL = "MOEOPS_REBALANCE_STATUS_INTERVAL_S"
OPERATOR_CARBON_STATUS_INTERVAL = "MOEOPS_CARBON_STATUS_INTERVAL_S"
OPERATOR_WORKERS_INTERVAL = "MOEOPS_WORKERS_INTERVAL_S"
# The kopf peering object the replicas share (default `moeops`); the Helm chart names one per release.
OPERATOR_PEERING_NAME = "MOEOPS_PEERING_NAME"
# The grid region whose carbon intensity applies (a key of the static table): the carbon agent's node, or the
# machine of a local `moeops train` run.
CARBON_REGION = "MOEOPS_CARBON_REGION"
# The operator also reads NATS_URL below and hands it to every worker pod (rank 0 reports the job's progress; the
# ranks of jobs that want rebalancing publish step metrics and follow plans).

# Set by the operator on every worker pod of a MoETrainingJob.
CONFIG_PATH = "MOEOPS_CONFIG"
JOB_NAME = "MOEOPS_JOB_NAME"
NAMESPACE = "MOEOPS_NAMESPACE"
POD_NAME = "MOEOPS_POD_NAME"
NODE_NAME = "MOEOPS_NODE_NAME"
NNODES = "MOEOPS_NNODES"
NPROC_PER_NODE = "MOEOPS_NPROC_PER_NODE"
NODE_RANK = "MOEOPS_NODE_RANK"
CHECKPOINT_DIR = "MOEOPS_CHECKPOINT_DIR"
# Read by the trainer: where `pvc://<claim>/...` data sources are, one folder per claim (default /data, where the
# operator mounts the claim read-only; a local run names its own).
DATA_ROOT = "MOEOPS_DATA_ROOT"
MASTER_ADDR = "MASTER_ADDR"  # torch.distributed's own names for the static rendezvous endpoint.
MASTER_PORT = "MASTER_PORT"

# The NATS bus (moeops.bus.connection), read by every pod that publishes or consumes metrics and plans.
NATS_URL = "MOEOPS_NATS_URL"  # comma-separated server URLs, e.g. nats://nats-0.nats:4222,nats://nats-1.nats:4222
NATS_TOKEN = "MOEOPS_NATS_TOKEN"  # an auth token (from a Secret)
NATS_CREDS = "MOEOPS_NATS_CREDS"  # path of a .creds file: user JWT + nkey seed (decentralised auth)
NATS_NKEY_SEED = "MOEOPS_NATS_NKEY_SEED"  # path of a file holding an nkey seed (SU...)
NATS_TLS_CA = "MOEOPS_NATS_TLS_CA"  # path of the CA bundle that signed the servers' certificates
NATS_TLS_CERT = "MOEOPS_NATS_TLS_CERT"  # path of a client certificate (mutual TLS), with NATS_TLS_KEY
NATS_TLS_KEY = "MOEOPS_NATS_TLS_KEY"

# Health endpoints (/healthz, /readyz) of the long-running services (the rebalancer, the carbon aggregator and
# agent: `moeops.bus.health`): bind address (default loopback; the chart sets the pod IP), port (default 0: any
# free one, logged) and how long a main loop may make no progress before /healthz fails (default per service).
HEALTH_ADDR = "MOEOPS_HEALTH_ADDR"
HEALTH_PORT = "MOEOPS_HEALTH_PORT"
HEALTH_STALE_S = "MOEOPS_HEALTH_STALE_S"

# Set by the operator on every server pod of an InferenceService (and POD_NAME, NATS_URL, NATS_TOKEN above when
# the operator has a bus: the server reports its load for the autoscaler, `moeops.serving.load_reporter`).
SERVING_CONFIG = "MOEOPS_SERVING_CONFIG"
MODEL_DIR = "MOEOPS_MODEL_DIR"

# Exit code of a worker whose configuration can never work: the Job fails at once instead of retrying.
EXIT_CODE_INVALID_CONFIG = 78  # EX_CONFIG from sysexits.h
