"""Per-step metrics behind a small interface. Publishing never blocks or slows a training step: sinks get
records through a bounded buffer drained by a background thread, and a full buffer drops (and counts)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TextIO


@dataclass(frozen=True)
class StepMetrics:
    step: int
    rank: int
    loss: float
    """Cross-entropy of this step over all ranks' answer tokens (the optimised objective, without aux terms)."""
    aux_loss: float
    tokens: int
    """Tokens this rank processed this step."""
    step_seconds: float
    compute_seconds: float
    comm_seconds: float
    """Time blocked in collectives this rank measured (gradient all-reduce and metric reductions)."""
    lr: float
    tokens_per_expert: list[list[int]] = field(default_factory=list)
    """Per MoE layer (all layers, every pipeline stage), assignments per expert summed over the data-parallel
    ranks this step: the same on every rank (the rebalancer's load input)."""
    max_memory_bytes: int = 0


class MetricsSink(Protocol):
    def publish(self, record: StepMetrics) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Discards every record (no metrics destination configured)."""

    def publish(self, record: StepMetrics) -> None:
        """Nothing to send."""

    def close(self) -> None:
        """Nothing to release."""


class JsonlSink:
    """One JSON line per step (local runs and tests)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def publish(self, record: StepMetrics) -> None:
        self._file.write(json.dumps(asdict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class BackgroundSink:
    """Wraps a sink so that the training loop only ever does a non-blocking `put`."""

    def __init__(self, inner: MetricsSink, capacity: int = 1024) -> None:
        self._inner = inner
        self._queue: queue.Queue[StepMetrics | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self._thread = threading.Thread(target=self._drain, name="metrics-sink", daemon=True)
        self._thread.start()

    def publish(self, record: StepMetrics) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        while (record := self._queue.get()) is not None:
            self._inner.publish(record)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._inner.close()


class ProgressSink:
    """A one-line progress bar on a terminal (a line every `every` steps otherwise), for rank 0. Honest after a
    set-up or a resume: the rate counts the training steps' own time only (not start-up, the tokenizer, a
    checkpoint load), and the ETA extrapolates from this run's steps (wall time since its first step began,
    checkpoint saves included), not from the steps a previous run did."""

    WIDTH = 30

    def __init__(
        self, total_steps: int, stream: TextIO, every: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._total, self._stream, self._every, self._clock = total_steps, stream, every, clock
        self._tty = stream.isatty()
        self._tokens, self._step_seconds = 0, 0.0
        self._first: tuple[int, float] | None = None
        """(step, when it began) of this run's first step."""

    def publish(self, record: StepMetrics) -> None:
        now = self._clock()
        if self._first is None:
            self._first = (record.step, now - record.step_seconds)
        self._tokens += record.tokens
        self._step_seconds += record.step_seconds
        if not self._tty and record.step % self._every and record.step != self._total:
            return
        first_step, began = self._first
        steps_here = record.step - first_step + 1
        rate = self._tokens / self._step_seconds if self._step_seconds > 0 else 0.0
        eta = (now - began) / steps_here * max(0, self._total - record.step)
        bar = "=" * int(record.step / max(1, self._total) * self.WIDTH)
        line = (f"step {record.step}/{self._total} [{bar:<{self.WIDTH}}] loss {record.loss:.3f}"
                f" {rate:,.0f} tok/s/rank eta {eta:.0f}s")  # fmt: skip
        self._stream.write(("\r" + line) if self._tty else line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


class FanOut:
    """Publishes every record to several sinks."""

    def __init__(self, *sinks: MetricsSink) -> None:
        self._sinks = sinks

    def publish(self, record: StepMetrics) -> None:
        for sink in self._sinks:
            sink.publish(record)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
