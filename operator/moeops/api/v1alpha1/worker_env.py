"""Extra environment variables for the worker containers (`spec.workers.env`).

Plain values only, as a Pod's `env` without `valueFrom`. The names the operator sets itself are refused at apply
time: every `MOEOPS_` variable (the job's identity, rendezvous, bus settings, and more to come) and torch's
`MASTER_ADDR`/`MASTER_PORT` — a job that overrode them would rendezvous or report somewhere else. The one
exception is the trainer's fault injection (`MOEOPS_FAULT_*`, see `moeops.trainer.faults`), which exists to be set
on a job by tests and demos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from .common import KubeModel, cel

C_IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
OPERATOR_PREFIX = "MOEOPS_"
FAULT_PREFIX = "MOEOPS_FAULT_"
RENDEZVOUS_NAMES = ("MASTER_ADDR", "MASTER_PORT")
MAX_WORKER_ENV = 32

RESERVED_NAME_MESSAGE = (
    "workers.env must not set a variable the operator sets (MOEOPS_*, except the fault-injection MOEOPS_FAULT_*,"
    " MASTER_ADDR, MASTER_PORT)"
)
_NOT_RESERVED_RULE = (
    f"(!self.name.startsWith('{OPERATOR_PREFIX}') || self.name.startsWith('{FAULT_PREFIX}'))"
    + "".join(f" && self.name != '{name}'" for name in RENDEZVOUS_NAMES)
)


def operator_sets(name: str) -> bool:
    """Whether the operator owns this variable on a worker (the CEL rule above, in Python)."""
    owned_prefix = name.startswith(OPERATOR_PREFIX) and not name.startswith(FAULT_PREFIX)
    return owned_prefix or name in RENDEZVOUS_NAMES


class EnvVar(KubeModel):
    """One environment variable of the worker container, with a plain value."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel(_NOT_RESERVED_RULE, RESERVED_NAME_MESSAGE, field_path=".name")]
        }
    )

    name: str = Field(
        min_length=1, max_length=128, pattern=C_IDENTIFIER_PATTERN, description="Variable name (a C identifier)."
    )
    value: str = Field(
        default="", max_length=4096, description="Its value; `$(NAME)` expands a variable set before it, as in a Pod."
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if operator_sets(name):
            raise ValueError(RESERVED_NAME_MESSAGE)
        return name


def distinct_names(env: Sequence[EnvVar] | None) -> Sequence[EnvVar] | None:
    """A field validator: each name once (the API server checks the same through the list-map key)."""
    names = [var.name for var in env or ()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"workers.env sets {', '.join(duplicates)} more than once")
    return env


WORKER_ENV_SCHEMA: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
"""The list's schema extras: a map keyed by name, as a Pod's `env` is merged."""
