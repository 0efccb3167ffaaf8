"""A training job describes itself to the rebalancer: layout, batch and rebalancing settings (pure schema).

Rank 0 of every job that rebalances writes one `JobDescription` to the JOBS_BUCKET KV bucket (key
`<namespace>.<job>`) when it starts, so a single rebalancer serves every job in the cluster without per-job flags:
it looks the description up the first time a job's metrics arrive. A restarted job (another world size, another
pipeline split from a checkpoint) overwrites its description.
"""

from __future__ import annotations

from typing import Annotated, Final, Self

from pydantic import Field, model_validator

from .messages import BusMessage, FiniteFloat, NonNegativeInt, decode_stored
from .subjects import token

JOBS_BUCKET: Final = "moeops-jobs"

Positive = Annotated[int, Field(ge=1)]


def job_key(namespace: str, job: str) -> str:
    return f"{token(namespace)}.{token(job)}"


class JobDescription(BusMessage):
    world_size: Positive
    global_batch: Positive
    pipeline: Positive = 1
    tensor: Positive = 1
    expert: Positive = 1
    layers: Positive
    experts: NonNegativeInt = 0
    """Routed experts per MoE layer."""
    params_per_expert: NonNegativeInt = 0
    spare_slots: NonNegativeInt = 0
    """Expert slots per EP rank beyond experts / expert degree (replicas of hot experts)."""
    micro_batches: Positive = 1
    """Per data-parallel rank and step: a data share below it cannot be run."""
    stage_layers: list[tuple[NonNegativeInt, NonNegativeInt]] = Field(min_length=1)
    rebalance_enabled: bool = True
    min_gain: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.05
    interval_steps: Positive = 50
    data_interval_steps: Positive | None = None
    """Steps between data-share-only re-plans (None: interval_steps)."""
    described_at_unix_s: FiniteFloat

    @model_validator(mode="after")
    def _layout_fits_the_world(self) -> Self:
        if self.world_size % (self.pipeline * self.tensor):
            raise ValueError(f"a world of {self.world_size} is not pipeline {self.pipeline} × tensor {self.tensor}")
        if len(self.stage_layers) != self.pipeline or self.stage_layers[-1][1] != self.layers:
            raise ValueError(f"stage layers {self.stage_layers} do not split {self.layers} layers over the stages")
        return self

    @property
    def key(self) -> str:
        return job_key(self.namespace, self.job)


def decode_description(data: bytes) -> JobDescription:
    """A stored description, or BadMessage (the only exception) for bytes that are not one."""
    return decode_stored(JobDescription, data)
