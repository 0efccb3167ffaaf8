"""Every NATS subject, stream and bucket name moeops uses, built in one place.

    moeops.metrics.<namespace>.<job>.<rank>   worker step metrics (stream MOEOPS_METRICS)
    moeops.plans.<namespace>.<job>            rebalance plans (republished from the KV bucket moeops-plans)
    moeops.carbon.energy.<node>               a node agent's energy deltas (stream MOEOPS_CARBON)
    moeops.carbon.>                           reserved for more carbon accounting messages

Namespaces and job names are Kubernetes object names (DNS-1123: lowercase letters, digits, `-` and `.`). A NATS
subject token may not hold a `.`, so dots become `_`; `_` cannot occur in a Kubernetes name, which keeps the
mapping one-to-one. Anything else that cannot be a token (empty, spaces, wildcards, non-ASCII) is rejected with
`InvalidToken` rather than silently rewritten: a rewritten name could collide with another job's subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

ROOT = "moeops"
METRICS_ROOT = f"{ROOT}.metrics"
PLANS_ROOT = f"{ROOT}.plans"
CARBON_ROOT = f"{ROOT}.carbon"
"""The carbon accountant's messages."""
CARBON_ENERGY_ROOT = f"{CARBON_ROOT}.energy"

METRICS_STREAM = "MOEOPS_METRICS"
CARBON_STREAM = "MOEOPS_CARBON"
CARBON_BUCKET = "moeops-carbon"
"""The aggregator's ledger snapshot (key CARBON_LEDGER_KEY) and the per-workload totals it publishes."""
CARBON_LEDGER_KEY = "ledger"
PLANS_BUCKET = "moeops-plans"
PLANS_KV_ROOT = f"$KV.{PLANS_BUCKET}"
"""The subjects the KV bucket stores its values under (`$KV.<bucket>.<key>`)."""

MSG_ID_HEADER = "Nats-Msg-Id"
"""JetStream drops a message whose id it has already stored within the stream's duplicate window."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_RANK = re.compile(r"[0-9]+")


class InvalidToken(ValueError):
    """A name that cannot become a NATS subject token."""


class SubjectKind(Enum):
    METRICS = "metrics"
    PLAN = "plan"


@dataclass(frozen=True)
class ParsedSubject:
    """What a concrete (wildcard-free) moeops subject names; tokens are in their subject form."""

    kind: SubjectKind
    namespace_token: str
    job_token: str
    rank: int | None = None


def token(name: str) -> str:
    """The subject token for a namespace or job name (dots become `_`); raises InvalidToken otherwise."""
    candidate = name.replace(".", "_")
    if not _TOKEN.fullmatch(candidate):
        raise InvalidToken(
            f"{name!r} cannot be a NATS subject token: use letters, digits, '-', '_' or '.' (a Kubernetes name)"
        )
    return candidate


def _rank_token(rank: int) -> str:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise InvalidToken(f"rank must be a non-negative int, got {rank!r}")
    return str(rank)


def metrics_subject(namespace: str, job: str, rank: int) -> str:
    """Where one worker rank publishes its step metrics."""
    return f"{METRICS_ROOT}.{token(namespace)}.{token(job)}.{_rank_token(rank)}"


def metrics_filter(namespace: str | None = None, job: str | None = None) -> str:
    """A subscription filter: every job's metrics, one namespace's, or every rank of one job."""
    if job is not None:
        if namespace is None:
            raise ValueError("a job filter needs its namespace")
        return f"{METRICS_ROOT}.{token(namespace)}.{token(job)}.*"
    if namespace is not None:
        return f"{METRICS_ROOT}.{token(namespace)}.>"
    return f"{METRICS_ROOT}.>"


def plans_subject(namespace: str, job: str) -> str:
    """Where a job's plans are announced (the bucket republishes every stored plan here)."""
    return f"{PLANS_ROOT}.{token(namespace)}.{token(job)}"


def plans_filter(namespace: str | None = None) -> str:
    """A subscription filter: every job's plans, or one namespace's."""
    return f"{PLANS_ROOT}.{token(namespace)}.*" if namespace is not None else f"{PLANS_ROOT}.>"


def plan_key(namespace: str, job: str) -> str:
    """The key of a job's latest plan in the PLANS_BUCKET KV bucket."""
    return f"{token(namespace)}.{token(job)}"


def metrics_msg_id(namespace: str, job: str, rank: int, step: int) -> str:
    """The dedup id of one rank's metrics for one step: a retried publish of the same step is stored once.

    The namespace is part of it because a stream's dedup window spans every subject it holds."""
    return f"{token(namespace)}/{token(job)}/{_rank_token(rank)}/{step}"


def carbon_energy_subject(node: str) -> str:
    """Where a node's agent publishes its energy deltas: one subject per node keeps each meter's deltas in order."""
    return f"{CARBON_ENERGY_ROOT}.{token(node)}"


def carbon_energy_node_token(subject: str) -> str | None:
    """The node token of a concrete carbon energy subject, else None."""
    prefix, _, node = subject.rpartition(".")
    return node if prefix == CARBON_ENERGY_ROOT and _TOKEN.fullmatch(node) else None


def carbon_workload_key(namespace: str, kind: str, name: str) -> str:
    """The key of one workload's carbon totals in CARBON_BUCKET (`workload.<namespace>.<kind>.<name>`)."""
    return f"workload.{token(namespace)}.{token(kind)}.{token(name)}"


def carbon_msg_id(source: str, epoch: int, sequence: int) -> str:
    """The dedup id of one energy delta: its meter, the meter's run and its place in that run (the ledger's
    DeltaId), so a delta the agent sends again is stored once."""
    return f"{source}/{epoch}/{sequence}"


def parse(subject: str) -> ParsedSubject | None:
    """The kind and names of a concrete moeops subject (plans also under the bucket's `$KV` prefix), else None."""
    parts = subject.split(".")
    root = ".".join(parts[:2])
    if len(parts) == 5 and root == METRICS_ROOT and _RANK.fullmatch(parts[4]):
        names = parts[2:4]
        rank: int | None = int(parts[4])
        kind = SubjectKind.METRICS
    elif len(parts) == 4 and root in (PLANS_ROOT, PLANS_KV_ROOT):
        names, rank, kind = parts[2:4], None, SubjectKind.PLAN
    else:
        return None
    if not all(_TOKEN.fullmatch(name) for name in names):
        return None
    return ParsedSubject(kind, names[0], names[1], rank)
