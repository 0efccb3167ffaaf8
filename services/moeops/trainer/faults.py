"""Fault injection for tests and demos of the rebalancer: a rank made artificially slower than its peers.

`MOEOPS_FAULT_SEQUENCE_DELAY="RANK:SECONDS"` (e.g. "3:0.03") makes that rank spend SECONDS more on every sequence
it trains on (a sleep before each forward pass, times the micro-batch's rows), the way a slower GPU takes longer
for more work: its extra time follows its data share exactly, so a smaller share really makes it faster, whatever
the fixed per-step costs of a small model (a delay proportional to the measured forward time would mostly scale
those). Never set it in production; the worker logs loudly when it is set.
"""

from __future__ import annotations

import os
import time
from typing import Any

from torch import Tensor, nn

from .errors import ConfigError

SEQUENCE_DELAY_ENV = "MOEOPS_FAULT_SEQUENCE_DELAY"


def sequence_delay_for(rank: int, environ: dict[str, str] | None = None) -> float:
    """This rank's extra seconds per sequence from the environment (0.0 when it is not the slowed rank)."""
    value = (os.environ if environ is None else environ).get(SEQUENCE_DELAY_ENV, "")
    if not value:
        return 0.0
    try:
        slowed, seconds_text = value.split(":")
        seconds = float(seconds_text)
        slowed_rank = int(slowed)
    except ValueError:
        raise ConfigError(f"{SEQUENCE_DELAY_ENV}={value!r}: expected RANK:SECONDS, e.g. 3:0.03") from None
    if not 0.0 <= seconds <= 60.0:
        raise ConfigError(f"{SEQUENCE_DELAY_ENV}: the delay must be in [0, 60] seconds, got {seconds}")
    return seconds if rank == slowed_rank else 0.0


def delay_sequences(model: nn.Module, seconds_per_sequence: float) -> None:
    """A forward pre-hook on `model` that sleeps `seconds_per_sequence` × the rows of its input."""

    def before(_module: nn.Module, args: tuple[Any, ...]) -> None:
        rows = args[0].shape[0] if args and isinstance(args[0], Tensor) else 1
        time.sleep(seconds_per_sequence * rows)

    model.register_forward_pre_hook(before)
