"""Fault injection for tests of the rebalancer: a rank made artificially slower than its peers.

`MOEOPS_FAULT_SLOWDOWN="RANK:FACTOR"` (e.g. "3:0.6") makes that rank run at FACTOR of its speed: after each
forward pass of the model it sleeps (1/FACTOR − 1) × 3 × the forward's time (a backward pass costs about two
forwards), so the delay scales with the rank's batch as a slower GPU's would, and a smaller data share really
makes the rank faster. Never set it in production; the worker logs loudly when it is set.
"""

from __future__ import annotations

import os
import time
from typing import Any

from torch import nn

from .errors import ConfigError
from .runners import FORWARD_SHARE_OF_WORK

SLOWDOWN_ENV = "MOEOPS_FAULT_SLOWDOWN"
FORWARD_SHARE_OF_STEP = FORWARD_SHARE_OF_WORK


def slowdown_for(rank: int, environ: dict[str, str] | None = None) -> float:
    """This rank's speed factor from the environment (1.0 when it is not the slowed rank)."""
    value = (os.environ if environ is None else environ).get(SLOWDOWN_ENV, "")
    if not value:
        return 1.0
    try:
        slowed, factor_text = value.split(":")
        factor = float(factor_text)
        slowed_rank = int(slowed)
    except ValueError:
        raise ConfigError(f"{SLOWDOWN_ENV}={value!r}: expected RANK:FACTOR, e.g. 3:0.6") from None
    if not 0.0 < factor <= 1.0:
        raise ConfigError(f"{SLOWDOWN_ENV}: the factor must be in (0, 1], got {factor}")
    return factor if rank == slowed_rank else 1.0


def slow_down(model: nn.Module, factor: float) -> None:
    """Hooks that stretch every forward (and, by proxy, its backward) of `model` to 1/factor of its time."""
    started: list[float] = [0.0]

    def before(_module: nn.Module, _args: Any) -> None:
        started[0] = time.perf_counter()

    def after(_module: nn.Module, _args: Any, _output: Any) -> None:
        elapsed = time.perf_counter() - started[0]
        time.sleep((1.0 / factor - 1.0) * FORWARD_SHARE_OF_STEP * elapsed)

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after)
