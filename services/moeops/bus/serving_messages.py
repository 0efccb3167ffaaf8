"""The model servers' load, as each replica reports it for the autoscaler (pure schema, no NATS).

Transport: the KV bucket SERVING_LOAD_BUCKET, one key per server pod, `<namespace>.<service>.<pod>` (subject tokens:
dots become `_`, see `subjects.token`), history 1. Every server rewrites its key every couple of seconds
(`moeops.serving.load_reporter`); the bucket's entries expire after SERVING_LOAD_TTL_S, so a pod that died without
deleting its key drops out by itself within that time. The operator's autoscaler reads every key of one service
(`<namespace>.<service>.*`) on each tick (`moeops.bus.serving_load`).

Same rules as `messages.py`: the document carries `schema_version`; readers ignore fields they don't know and
reject a version they don't know; `decode_load` raises nothing but BadMessage, whatever the bytes.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .messages import SCHEMA_VERSION, FiniteFloat, NonNegativeInt, decode_stored
from .subjects import token

SERVING_LOAD_BUCKET: Final = "moeops-serving-load"
SERVING_LOAD_TTL_S: Final = 30.0
"""An entry not rewritten for this long is gone: its pod stopped reporting (crashed, deleted, partitioned). Ten
report intervals: a few lost writes don't make a live pod vanish, and a dead one stops counting within 30 s."""

Rate = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


def load_key(namespace: str, service: str, pod: str) -> str:
    """The key of one server pod's load; raises InvalidToken for a name that cannot be a subject token."""
    return f"{service_prefix(namespace, service)}.{token(pod)}"


def service_prefix(namespace: str, service: str) -> str:
    """The keys of one InferenceService's pods all start with this (then `.` and the pod)."""
    return f"{token(namespace)}.{token(service)}"


class ServerLoad(BaseModel):
    """One server pod's load at `measured_at_unix_s` (its wall clock)."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # newer writers may add optional fields

    schema_version: Literal[1] = SCHEMA_VERSION
    namespace: str = Field(min_length=1, max_length=253)
    service: str = Field(min_length=1, max_length=253)
    """The InferenceService's name."""
    pod: str = Field(min_length=1, max_length=253)
    in_flight: NonNegativeInt
    """Requests being generated right now (admitted into a batch)."""
    queued: NonNegativeInt = 0
    """Requests accepted but waiting for a batch slot: demand the replica could not serve yet."""
    tokens_per_second: Rate = 0.0
    """Generated tokens per second, smoothed by the server (an exponential moving average over a few seconds)."""
    requests_per_second: Rate = 0.0
    """Completed requests per second, smoothed likewise."""
    measured_at_unix_s: FiniteFloat

    @field_validator("namespace", "service", "pod")
    @classmethod
    def _usable_as_key_token(cls, name: str) -> str:
        token(name)  # raises InvalidToken (a ValueError, so a ValidationError to the caller)
        return name

    @property
    def key(self) -> str:
        return load_key(self.namespace, self.service, self.pod)

    @property
    def demand(self) -> int:
        """What the autoscaler sizes for: requests in flight plus those waiting for a slot."""
        return self.in_flight + self.queued


def encode_load(load: ServerLoad) -> bytes:
    return load.model_dump_json().encode()


def decode_load(data: bytes) -> ServerLoad:
    """A stored load, or BadMessage (the only exception it raises) for bytes that are not one."""
    return decode_stored(ServerLoad, data)
