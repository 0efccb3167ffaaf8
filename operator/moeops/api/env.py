"""Every environment variable moeops reads or sets, in one place (the operator sets them on pods,
the runtime and the services read them)."""

from __future__ import annotations

# Operator settings (read by `moeops operator run`).
OPERATOR_RUNTIME_IMAGE = "MOEOPS_RUNTIME_IMAGE"
OPERATOR_IMAGE_PULL_POLICY = "MOEOPS_IMAGE_PULL_POLICY"
OPERATOR_NAMESPACES = "MOEOPS_WATCH_NAMESPACES"
OPERATOR_MAX_WORKERS = "MOEOPS_OPERATOR_MAX_WORKERS"

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
MASTER_ADDR = "MASTER_ADDR"  # torch.distributed's own names for the static rendezvous endpoint.
MASTER_PORT = "MASTER_PORT"

# Set by the operator on every server pod of an InferenceService.
SERVING_CONFIG = "MOEOPS_SERVING_CONFIG"
MODEL_DIR = "MOEOPS_MODEL_DIR"

# Exit code of a worker whose configuration can never work: the Job fails at once instead of retrying.
EXIT_CODE_INVALID_CONFIG = 78  # EX_CONFIG from sysexits.h
