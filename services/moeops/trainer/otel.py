"""The trainer's OpenTelemetry, where it is cheap (the process configures the SDK: `moeops.telemetry.setup`).

Spans (`span`): one `train step` per optimizer step (attribute moeops.step) with its phases as children
(`forward backward`, `gradient sync`, `optimizer`), one per checkpoint save and per plan application; all carry
moeops.rank. Cheap beside a step (a few spans of ~10 µs each with the SDK's batch processor, ~1 µs each with the
API's no-op tracer), and a trace backend samples them as it likes. They time the host: on a GPU the kernels run
asynchronously, so a phase's span ends when its kernels are queued, and the wait for them shows up in the phase that
synchronises (the collectives, the loss read at the step's end). The last step's figures are observable gauges read
when the SDK's reader collects (`StepGauges`, a metrics sink beside the others; attribute moeops.rank):

    moeops.trainer.tokens_per_second  {token}/s  this rank's tokens over its step time
    moeops.trainer.step.duration      s          the last step's wall time on this rank
    moeops.trainer.loss               1          the last step's cross-entropy (over all ranks)
    moeops.trainer.step               {step}     the last completed step
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from moeops import telemetry

from .metrics import StepMetrics

TRACER = "moeops.trainer"
RANK = "moeops.rank"


def span(name: str, rank: int, **attributes: Any) -> AbstractContextManager[Any]:
    """A span of the trainer (no-op unless telemetry is on)."""
    attrs = {RANK: rank, **{f"moeops.{key}": value for key, value in attributes.items() if value is not None}}
    return telemetry.tracer(TRACER).start_as_current_span(name, attributes=attrs)


class StepGauges:
    """A MetricsSink keeping the last StepMetrics for observable gauges."""

    def __init__(self, meter: Meter | None = None) -> None:
        self._lock = threading.Lock()
        self._last: StepMetrics | None = None
        meter = meter if meter is not None else telemetry.meter(TRACER)
        self.instruments = [
            meter.create_observable_gauge("moeops.trainer.tokens_per_second", [self._reading(_tokens_per_second)],
                                          unit="{token}/s", description="This rank's tokens per second of step."),
            meter.create_observable_gauge("moeops.trainer.step.duration", [self._reading(lambda m: m.step_seconds)],
                                          unit="s", description="The last step's wall time on this rank."),
            meter.create_observable_gauge("moeops.trainer.loss", [self._reading(lambda m: m.loss)], unit="1",
                                          description="The last step's training loss."),
            meter.create_observable_gauge("moeops.trainer.step", [self._reading(lambda m: m.step)], unit="{step}",
                                          description="The last completed optimizer step."),
        ]  # fmt: skip

    def publish(self, record: StepMetrics) -> None:
        with self._lock:
            self._last = record

    def close(self) -> None:
        """Nothing to release: the reader stops with the MeterProvider."""

    def _reading(self, pick: Callable[[StepMetrics], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                last = self._last
            if last is None:
                return []
            value = float(pick(last))
            return [] if math.isnan(value) else [Observation(value, {RANK: last.rank})]

        return observe


def _tokens_per_second(m: StepMetrics) -> float:
    return m.tokens / m.step_seconds if m.step_seconds > 0 else 0.0
